import { ApplicationFailure, Context } from '@temporalio/activity';
import { WorkflowFailedError } from '@temporalio/client';
import type { CheckpointStatus } from '../../common/checkpoint';
import { CONTROL_QUEUE, restoreWorkflowId } from '../../common/queues';
import type { Candidate, Reservation, RestoreInspection, RestoreRequest, RestoreStatus } from '../../common/restore';
import { finalStatus } from '../../clients/outcome';
import type { MigrateStatus } from '../../common/migrate';
import { isMigrateStatus, statusFromFailure } from '../../common/outcome';
import { type ControlMock, Harness, type NodeMock } from './harness';

let h: Harness;
beforeAll(async () => {
  h = await Harness.create();
  await restoreOn({ 'node-a': 16 }, {}, { checkpointId: 'warmup' }).catch(() => undefined);
}, 120000);
afterAll(async () => h?.teardown());
afterEach(async () => h?.reset());

const GiB = 1024 ** 3;

/**
 * Control activities over an in-memory cluster: nodes with free VRAM (GiB), the checkpoint taken on node-a,
 * reservations as the placement workflow makes them. `calls` records every activity, node-qualified.
 */
function control(calls: string[], free: Record<string, number>, over: ControlMock = {}): ControlMock {
  const held = new Map<string, Reservation>();
  return {
    checkpointInfo: async ({ checkpointId }) => ({
      checkpointId,
      jobId: 'job-1',
      node: 'node-a',
      tier: 's3',
      vramBytes: 6 * GiB,
    }),
    placementCandidates: async ({ bytes, exclude, prefer, only }) => {
      const c: Candidate[] = Object.entries(free)
        .filter(([n, g]) => g * GiB >= bytes && !exclude.includes(n) && (!only || only === n))
        .map(([node, g]) => ({ node, freeVramBytes: g * GiB, vramSource: 'declared' as const }));
      const rank = (n: string): number => (prefer.includes(n) ? prefer.indexOf(n) : prefer.length);
      return c.sort((a, b) => rank(a.node) - rank(b.node) || b.freeVramBytes - a.freeVramBytes);
    },
    reserve: async ({ reservationId, bytes, candidates }) => {
      const pick = candidates[0];
      if (!pick) return null;
      const r = { reservationId, node: pick.node, bytes };
      held.set(reservationId, r);
      calls.push(`reserve ${pick.node}`);
      return r;
    },
    release: async ({ reservationId }) => void held.delete(reservationId),
    // Node health reports (tested in health.test.ts) are taken and dropped here.
    reportNodeOutcome: async () => undefined,
    // job-1's workflow has ended (a restore of an open job's checkpoint is tested on its own below).
    jobOpen: async () => ({ open: false, state: null }),
    // Every node compatible, each with one 80 GiB GPU (the compatibility gate is tested on its own below).
    placementSurvey: async () => ({
      nodes: Object.keys(free).map((node) => ({ node, reason: null })),
      largestGpuBytes: 80 * GiB,
    }),
    raiseAlert: async (a) => {
      calls.push(`alert ${a.kind} ${a.node}`);
      return `alert/${a.kind}/${a.checkpointId}/x`;
    },
    ...over,
  };
}

function nodeMock(calls: string[], name: string, over: NodeMock = {}): NodeMock {
  const rec =
    <T>(what: string, v: T) =>
    async (): Promise<T> => {
      calls.push(`${what} ${name}`);
      return v;
    };
  return {
    fetch: async ({ checkpointId }) => {
      calls.push(`fetch ${name}`);
      return {
        dir: `/data/${name}/checkpoints/${checkpointId}`,
        bytes: 100,
        source: name === 'node-a' ? ('nvme' as const) : ('s3' as const),
        staged: false,
        jobId: 'job-1',
        vramBytes: 6 * GiB,
      };
    },
    criuRestore: rec('criuRestore', { pid: 777, startTime: 5000 }),
    checkVram: rec('checkVram', { freeVramBytes: 16 * GiB }),
    cudaRestore: rec('cudaRestore', { outcome: 'done' as const, detail: 'restored' }),
    cudaUnlock: rec('cudaUnlock', { outcome: 'done' as const, detail: 'unlocked' }),
    verifyRunning: rec('verifyRunning', {
      state: 'S',
      cuda: 'none',
      probes: 0,
      afterMs: 1000,
      detail: 'no readiness probe declared',
    }),
    adoptWorkload: rec('adoptWorkload', undefined),
    killProcess: rec('killProcess', { killed: true }),
    releaseStaging: rec('releaseStaging', { released: true }),
    ...over,
  };
}

let seq = 0;
async function restoreOn(
  free: Record<string, number>,
  overrides: Record<string, NodeMock>,
  req: RestoreRequest,
  calls: string[] = [],
  ctl: ControlMock = {},
): Promise<RestoreStatus> {
  const nodes = Object.fromEntries(Object.keys(free).map((n) => [n, nodeMock(calls, n, overrides[n])]));
  return h.with(control(calls, free, ctl), nodes, () =>
    h.env.client.workflow.execute('restore', {
      workflowId: restoreWorkflowId(req.checkpointId, ++seq),
      taskQueue: CONTROL_QUEUE,
      args: [req],
    }),
  );
}

const oom = (calls: string[], name: string) => async (): Promise<never> => {
  calls.push(`checkVram ${name}`);
  throw ApplicationFailure.create({
    message: `node ${name} has 2 GiB of VRAM free, 6 GiB needed`,
    type: 'CudaOutOfMemory',
    nonRetryable: true,
  });
};

describe('restore workflow', () => {
  test('lands on the node holding a local copy: fetch, CRIU, VRAM check, CUDA restore, unlock, verify, then Running', async () => {
    const calls: string[] = [];
    const s = await restoreOn({ 'node-a': 16, 'node-b': 32 }, {}, { checkpointId: 'ck1' }, calls);
    expect(s.phase).toBe('Running');
    expect(s.node).toBe('node-a');
    expect(s.pid).toBe(777);
    expect(s.source).toBe('nvme');
    expect(calls).toEqual([
      'reserve node-a',
      'fetch node-a',
      'criuRestore node-a',
      'checkVram node-a',
      'cudaRestore node-a',
      'cudaUnlock node-a',
      'verifyRunning node-a',
      'adoptWorkload node-a',
    ]);
  });

  test('fetched into memory: the staged copy is freed once CRIU restored, beside the steps after it (not on the way to Running), and after a failed attempt too', async () => {
    const calls: string[] = [];
    const staged =
      (name: string) =>
      async ({ checkpointId }: { checkpointId: string }) => {
        calls.push(`fetch ${name}`);
        return {
          dir: `/dev/shm/${name}/${checkpointId}`,
          bytes: 100,
          source: 's3' as const,
          staged: true,
          jobId: 'job-1',
          vramBytes: 6 * GiB,
        };
      };
    // node-b's check that the process runs ends only once its staged copy was released: the release must run
    // beside the steps after CRIU (a release after them would never come, and the restore never end).
    let released: () => void = () => undefined;
    const releasedB = new Promise<void>((r) => (released = r));
    const s = await restoreOn(
      { 'node-a': 8, 'node-b': 16 },
      {
        'node-a': { fetch: staged('node-a'), checkVram: oom(calls, 'node-a') },
        'node-b': {
          fetch: staged('node-b'),
          releaseStaging: async () => {
            calls.push('releaseStaging node-b');
            released();
            return { released: true };
          },
          verifyRunning: async () => {
            await releasedB;
            calls.push('verifyRunning node-b');
            return { state: 'S', cuda: 'none', probes: 0, afterMs: 1000, detail: 'no readiness probe declared' };
          },
        },
      },
      { checkpointId: 'ck-staged' },
      calls,
    );
    expect(s.phase).toBe('Running');
    // Once per attempt: node-a's after CRIU too (its VRAM check failed after), node-b's beside its last steps.
    expect(calls.filter((c) => c.startsWith('releaseStaging'))).toEqual([
      'releaseStaging node-a',
      'releaseStaging node-b',
    ]);
    expect(calls.indexOf('criuRestore node-b')).toBeLessThan(calls.indexOf('releaseStaging node-b'));
    expect(calls.indexOf('releaseStaging node-b')).toBeLessThan(calls.indexOf('verifyRunning node-b'));
  });

  test('each attempt names its own copy in memory: fetch, CRIU and release carry the attempt, and two attempts differ', async () => {
    const calls: string[] = [];
    const seen: Array<[string, string, string | undefined]> = [];
    const named = (name: string): NodeMock => ({
      fetch: async ({ checkpointId, attemptId }: { checkpointId: string; attemptId?: string }) => {
        seen.push(['fetch', name, attemptId]);
        return {
          dir: `/dev/shm/${name}/${checkpointId}.restore-${attemptId}`,
          bytes: 100,
          source: 's3' as const,
          staged: true,
          jobId: 'job-1',
          vramBytes: 6 * GiB,
        };
      },
      criuRestore: async ({ attemptId }: { attemptId?: string }) => {
        seen.push(['criuRestore', name, attemptId]);
        return { pid: 777, startTime: 5000 };
      },
      releaseStaging: async ({ attemptId, copy }: { attemptId?: string; copy?: string }) => {
        seen.push([`releaseStaging ${copy}`, name, attemptId]);
        return { released: true };
      },
    });
    const s = await restoreOn(
      { 'node-a': 8, 'node-b': 16 },
      { 'node-a': { ...named('node-a'), checkVram: oom(calls, 'node-a') }, 'node-b': named('node-b') },
      { checkpointId: 'ck-own-copy' },
      calls,
    );
    expect(s.phase).toBe('Running');
    const byNode = (n: string): Array<[string, string | undefined]> =>
      seen.filter(([, node]) => node === n).map(([what, , a]) => [what, a]);
    const [a, b] = [byNode('node-a')[0][1], byNode('node-b')[0][1]];
    expect(a).toMatch(/^ck-own-copy\.r\d+\.a1$/);
    expect(b).toMatch(/^ck-own-copy\.r\d+\.a2$/);
    for (const [n, id] of [
      ['node-a', a],
      ['node-b', b],
    ] as const)
      expect(byNode(n)).toEqual([
        ['fetch', id],
        ['criuRestore', id],
        ['releaseStaging restore', id],
      ]);
  });

  test('fetched into memory and CRIU failed: the staged copy is still freed', async () => {
    const calls: string[] = [];
    const s = restoreOn(
      { 'node-b': 16 },
      {
        'node-b': {
          fetch: async ({ checkpointId }: { checkpointId: string }) => {
            calls.push('fetch node-b');
            return {
              dir: `/dev/shm/node-b/${checkpointId}`,
              bytes: 100,
              source: 's3' as const,
              staged: true,
              jobId: 'job-1',
              vramBytes: 6 * GiB,
            };
          },
          criuRestore: async () => {
            calls.push('criuRestore node-b');
            throw ApplicationFailure.create({
              message: 'criu: restore failed',
              type: 'CriuRestoreFailed',
              nonRetryable: true,
            });
          },
        },
      },
      { checkpointId: 'ck-staged-fail' },
      calls,
    );
    await expect(s).rejects.toThrow();
    expect(calls.filter((c) => c.startsWith('releaseStaging'))).toEqual(['releaseStaging node-b']);
  });

  test('only nodes with enough free VRAM are candidates', async () => {
    const calls: string[] = [];
    const s = await restoreOn({ 'node-a': 4, 'node-b': 8 }, {}, { checkpointId: 'ck2' }, calls);
    expect(s.node).toBe('node-b');
    expect(calls[0]).toBe('reserve node-b');
  });

  test('VRAM out of memory: the half-restored process is killed, the node excluded, and the restore lands on the next node', async () => {
    const calls: string[] = [];
    const s = await restoreOn(
      { 'node-a': 8, 'node-b': 16 },
      { 'node-a': { checkVram: oom(calls, 'node-a') } },
      { checkpointId: 'ck3' },
      calls,
    );
    expect(s.phase).toBe('Running');
    expect(s.node).toBe('node-b');
    expect(s.attempts.map((a) => `${a.node}:${a.outcome}:${a.phase}`)).toEqual([
      'node-a:failed:RestoringVram',
      'node-b:running:Running',
    ]);
    expect(s.excluded).toEqual(['node-a']);
    expect(calls).toContain('killProcess node-a');
    expect(calls.indexOf('killProcess node-a')).toBeLessThan(calls.indexOf('reserve node-b'));
    expect(calls).not.toContain('cudaRestore node-a');
  });

  test('a CUDA restore that fails is never reported Running: killed, Failed', async () => {
    const calls: string[] = [];
    const err = await restoreOn(
      { 'node-a': 16 },
      {
        'node-a': {
          cudaRestore: async () => {
            calls.push('cudaRestore node-a');
            throw ApplicationFailure.nonRetryable('CUresult 999', 'CudaError');
          },
        },
      },
      { checkpointId: 'ck4' },
      calls,
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    expect(calls).toContain('killProcess node-a');
    expect(calls).not.toContain('verifyRunning node-a');
  });

  test('deterministic CRIU failure: non-retryable, alert raised, no other node tried', async () => {
    const calls: string[] = [];
    const err = await restoreOn(
      { 'node-a': 16, 'node-b': 16 },
      {
        'node-a': {
          criuRestore: async () => {
            calls.push('criuRestore node-a');
            throw ApplicationFailure.nonRetryable(
              'criu restore failed: Error (criu/cr-restore.c): Unsupported image version',
              'CriuRestoreFailed',
            );
          },
        },
      },
      { checkpointId: 'ck5' },
      calls,
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('CriuRestoreFailed');
    expect(cause.nonRetryable).toBe(true);
    expect(calls).toContain('alert CriuRestoreFailed node-a');
    expect(calls.filter((c) => c.startsWith('reserve'))).toEqual(['reserve node-a']);
  });

  test('checksum mismatch in the S3 copy: the nvme copy on the checkpoint node is used instead', async () => {
    const calls: string[] = [];
    const s = await restoreOn(
      { 'node-a': 16, 'node-b': 16 },
      {
        'node-b': {
          fetch: async () => {
            calls.push('fetch node-b');
            throw ApplicationFailure.nonRetryable(
              'images/pages-1.img: S3 copy has sha256 00.., metadata.json says ab..',
              'ChecksumMismatch',
            );
          },
        },
      },
      { checkpointId: 'ck6', prefer: ['node-b'], node: undefined },
      calls,
      {
        checkpointInfo: async ({ checkpointId }) => ({
          checkpointId,
          jobId: 'job-1',
          node: 'node-a',
          tier: 's3',
          vramBytes: 6 * GiB,
        }),
        placementCandidates: async ({ exclude, only }) =>
          (['node-b', 'node-a'] as const)
            .filter((n) => !exclude.includes(n) && (!only || only === n))
            .map((node) => ({ node, freeVramBytes: 16 * GiB, vramSource: 'declared' as const })),
      },
    );
    expect(s.phase).toBe('Running');
    expect(s.node).toBe('node-a');
    expect(s.source).toBe('nvme');
    expect(s.attempts[0]).toMatchObject({ node: 'node-b', outcome: 'failed', phase: 'Fetching' });
    expect(calls).not.toContain('criuRestore node-b');
  });

  test('checksum mismatch with no other good copy: fails as corrupt, nothing restored', async () => {
    const calls: string[] = [];
    const bad = async (): Promise<never> => {
      calls.push('fetch');
      throw ApplicationFailure.nonRetryable('sha256 mismatch', 'ChecksumMismatch');
    };
    const err = await restoreOn({ 'node-a': 16 }, { 'node-a': { fetch: bad } }, { checkpointId: 'ck7' }, calls).catch(
      (e: unknown) => e,
    );
    expect(((err as WorkflowFailedError).cause as ApplicationFailure).type).toBe('ChecksumMismatch');
    expect(calls.some((c) => c.startsWith('criuRestore'))).toBe(false);
  });

  test('a checkpoint still on tier nvme is restored only on its own node', async () => {
    const calls: string[] = [];
    const nvme: ControlMock = {
      checkpointInfo: async ({ checkpointId }) => ({
        checkpointId,
        jobId: 'job-1',
        node: 'node-a',
        tier: 'nvme',
        vramBytes: 0,
      }),
    };
    const s = await restoreOn(
      { 'node-a': 16, 'node-b': 64 },
      {},
      { checkpointId: 'ck9', prefer: ['node-b'] },
      calls,
      nvme,
    );
    expect(s.node).toBe('node-a');
    expect(calls.filter((c) => c.endsWith('node-b'))).toEqual([]);
    const err = await restoreOn(
      { 'node-a': 16, 'node-b': 64 },
      {},
      { checkpointId: 'ck10', node: 'node-b' },
      [],
      nvme,
    ).catch((e: unknown) => e);
    expect(((err as WorkflowFailedError).cause as ApplicationFailure).type).toBe('CheckpointNotOnNode');
  });

  test('a checkpoint of an open job, restored outside it: refused (JobOpen) before any node is touched, naming what moves or stops the job', async () => {
    const calls: string[] = [];
    const asked: string[] = [];
    const err = await restoreOn({ 'node-a': 16 }, {}, { checkpointId: 'ck-open' }, calls, {
      jobOpen: async ({ jobId }) => {
        asked.push(jobId);
        return { open: true, state: 'Running' };
      },
    }).catch((e: unknown) => e);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('JobOpen');
    expect(cause.message).toMatch(
      /^checkpoint ck-open is of job job-1, which is still open \(state Running\): .*kybernate migrate job-1.*kybernate preempt job-1.*kybernate cancel job-1/,
    );
    expect(asked).toEqual(['job-1']);
    expect(calls).toEqual([]);
  });

  test('whether the job is open cannot be told (the control side failing): fails, nothing placed, rather than risk a second copy', async () => {
    const calls: string[] = [];
    const err = await restoreOn({ 'node-a': 16 }, {}, { checkpointId: 'ck-unknown' }, calls, {
      jobOpen: async () => {
        throw ApplicationFailure.nonRetryable('deadline exceeded', 'Unavailable');
      },
    }).catch((e: unknown) => e);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.message).toMatch(/^could not tell whether job job-1 is still open, so nothing was restored: /);
    expect(calls).toEqual([]);
  });

  test('a checkpoint of a job that ended is restored, the job asked once', async () => {
    const asked: string[] = [];
    const s = await restoreOn({ 'node-a': 16 }, {}, { checkpointId: 'ck-ended' }, [], {
      jobOpen: async ({ jobId }) => {
        asked.push(jobId);
        return { open: false, state: null };
      },
    });
    expect(s.phase).toBe('Running');
    expect(asked).toEqual(['job-1']);
  });

  test('no node fits: waits until the placement deadline, then fails with the reason', async () => {
    const calls: string[] = [];
    const started = Date.now();
    const err = await restoreOn({ 'node-a': 2 }, {}, { checkpointId: 'ck8', placementDeadline: '5m' }, calls).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('NoNodeFits');
    expect(cause.message).toMatch(/no node fits: 6442450944 bytes of VRAM needed.*waited 5m/);
    expect(Date.now() - started).toBeLessThan(60000); // five minutes of workflow time, skipped
  });
});

describe('restore: S3 out of reach is waited out, not blamed on the nodes', () => {
  /** A fetch that fails as the real one does with S3 away (retryable S3Unavailable), until `back()` says so. */
  const s3Outage = (calls: string[]) => {
    let up = false;
    const fetchOn =
      (name: string): NodeMock['fetch'] =>
      async ({ checkpointId }) => {
        calls.push(`fetch ${name}`);
        if (!up) throw ApplicationFailure.retryable('connect ECONNREFUSED 127.0.0.1:9000', 'S3Unavailable');
        return {
          dir: `/data/${name}/checkpoints/${checkpointId}`,
          bytes: 100,
          source: 's3' as const,
          staged: false,
          jobId: 'job-1',
          vramBytes: 6 * GiB,
        };
      };
    return { fetchOn, back: () => (up = true) };
  };

  test('both nodes fail to fetch while S3 is away: tried again after the wait, Running on the first once S3 answers', async () => {
    const calls: string[] = [];
    const { fetchOn, back } = s3Outage(calls);
    let waits = 0;
    const s = await restoreOn(
      { 'node-a': 16, 'node-b': 16 },
      { 'node-a': { fetch: fetchOn('node-a') }, 'node-b': { fetch: fetchOn('node-b') } },
      { checkpointId: 'ck-s3-away', placementDeadline: '10m' },
      calls,
      {
        // S3 comes back after the workflow has waited twice with no candidate left.
        placementCandidates: async ({ exclude }) => {
          const c = (['node-a', 'node-b'] as const)
            .filter((n) => !exclude.includes(n))
            .map((node) => ({ node, freeVramBytes: 16 * GiB, vramSource: 'declared' as const }));
          if (c.length === 0 && ++waits === 2) back();
          return c;
        },
      },
    );
    expect(s.phase).toBe('Running');
    expect(s.excluded).toEqual([]);
    const failed = s.attempts.filter((a) => a.outcome === 'failed');
    expect(failed.map((a) => [a.node, a.phase])).toEqual([
      ['node-a', 'Fetching'],
      ['node-b', 'Fetching'],
      ['node-a', 'Fetching'],
      ['node-b', 'Fetching'],
    ]);
    expect(failed.every((a) => /ECONNREFUSED/.test(a.reason ?? ''))).toBe(true);
    expect(s.attempts.at(-1)).toMatchObject({ node: 'node-a', outcome: 'running' });
    expect(calls.filter((c) => c.startsWith('criuRestore'))).toEqual(['criuRestore node-a']);
  });

  test('S3 failed a node once, then its VRAM was taken: the deadline names the VRAM (NoNodeFits), not the outage it outlived', async () => {
    const calls: string[] = [];
    const { fetchOn } = s3Outage(calls);
    let tried = false;
    const err = await restoreOn(
      { 'node-a': 16 },
      {
        'node-a': {
          fetch: async (input) => {
            tried = true;
            return fetchOn('node-a')!(input);
          },
        },
      },
      { checkpointId: 'ck-s3-then-vram', placementDeadline: '2m' },
      calls,
      {
        placementCandidates: async () =>
          tried ? [] : [{ node: 'node-a', freeVramBytes: 16 * GiB, vramSource: 'declared' as const }],
      },
    ).catch((e: unknown) => e);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('NoNodeFits');
    expect(cause.message).toMatch(/^no node fits: .*excluded: none; waited 2m/);
  });

  test('S3 away past the placement deadline: fails with S3Unavailable naming the outage on each node, not NoNodeFits', async () => {
    const calls: string[] = [];
    const { fetchOn } = s3Outage(calls);
    const err = await restoreOn(
      { 'node-a': 16, 'node-b': 16 },
      { 'node-a': { fetch: fetchOn('node-a') }, 'node-b': { fetch: fetchOn('node-b') } },
      { checkpointId: 'ck-s3-gone', placementDeadline: '2m' },
      calls,
    ).catch((e: unknown) => e);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('S3Unavailable');
    expect(cause.message).toMatch(
      /^S3 out of reach: from node-[ab]: .*ECONNREFUSED.*; from node-[ab]: .*ECONNREFUSED.*; waited 2m\. The checkpoint is untouched/,
    );
    // Tried again after each wait, not once per node for the whole deadline.
    expect(calls.filter((c) => c === 'fetch node-a').length).toBeGreaterThan(3);
    expect(calls.some((c) => c.startsWith('criuRestore'))).toBe(false);
  });
});

/** An activity on an agent that died: it never heartbeats again and never returns. */
const hang = (calls: string[], what: string) => async (): Promise<never> => {
  calls.push(what);
  await Context.current().sleep(600000);
  throw new Error('unreachable');
};

/** What the node reports after the loss: by default CRIU restored pid 778 (start time 9), which runs, without CUDA. */
const inspection = (over: Partial<RestoreInspection> = {}): RestoreInspection => ({
  criu: 'interrupted',
  failure: null,
  process: { pid: 778, startTime: 9 },
  running: true,
  state: 'S',
  cuda: 'none',
  ...over,
});

describe('restore: agent lost mid-restore', () => {
  test('lost during RestoringProcess and CRIU had finished: carries on with that process on the same node, nothing placed elsewhere', async () => {
    const calls: string[] = [];
    const seen: unknown[] = [];
    const s = await restoreOn(
      { 'node-a': 16, 'node-b': 16 },
      {
        'node-a': {
          criuRestore: hang(calls, 'criuRestore node-a'),
          inspectRestore: async (i) => {
            calls.push('inspectRestore node-a');
            seen.push(i);
            return inspection();
          },
          verifyRunning: async (i) => {
            calls.push('verifyRunning node-a');
            seen.push(i);
            return { state: 'S', cuda: 'none', probes: 0, afterMs: 1, detail: '' };
          },
        },
      },
      { checkpointId: 'lost1' },
      calls,
    );
    expect(s.phase).toBe('Running');
    expect(s.node).toBe('node-a');
    expect(s.pid).toBe(778);
    expect(calls).toEqual([
      'reserve node-a',
      'fetch node-a',
      'criuRestore node-a',
      'inspectRestore node-a',
      'checkVram node-a',
      'cudaRestore node-a',
      'cudaUnlock node-a',
      'verifyRunning node-a',
      'adoptWorkload node-a',
    ]);
    expect(seen[0]).toEqual({ checkpointId: 'lost1', attemptId: `lost1.r${seq}.a1` });
    expect(seen[1]).toEqual({ pid: 778, startTime: 9 });
    expect(s.recoveries).toHaveLength(1);
    expect(s.recoveries?.[0]).toMatch(
      /agent lost during RestoringProcess .*HEARTBEAT.*pid 778.*carried on at RestoringVram/,
    );
  });

  test('lost during RestoringVram with the VRAM still checkpointed: the CUDA restore is done again on that process', async () => {
    const calls: string[] = [];
    let cudaCalls = 0;
    const s = await restoreOn(
      { 'node-a': 16, 'node-b': 16 },
      {
        'node-a': {
          cudaRestore: async () => {
            if (++cudaCalls === 1) return hang(calls, 'cudaRestore node-a (agent dies)')();
            calls.push('cudaRestore node-a');
            return { outcome: 'done' as const, detail: 'restored' };
          },
          inspectRestore: async (i) => {
            calls.push(`inspectRestore node-a ${i.pid}/${i.startTime}`);
            return inspection({ process: { pid: 777, startTime: 5000 }, criu: 'done', cuda: 'checkpointed' });
          },
        },
      },
      { checkpointId: 'lost2' },
      calls,
    );
    expect(s.phase).toBe('Running');
    expect(s.node).toBe('node-a');
    expect(calls).toEqual([
      'reserve node-a',
      'fetch node-a',
      'criuRestore node-a',
      'checkVram node-a',
      'cudaRestore node-a (agent dies)',
      'inspectRestore node-a 777/5000',
      'checkVram node-a',
      'cudaRestore node-a',
      'cudaUnlock node-a',
      'verifyRunning node-a',
      'adoptWorkload node-a',
    ]);
  });

  test('CRIU had finished but the process cannot carry on (CUDA state failed): killed by identity before the restore is placed elsewhere', async () => {
    const calls: string[] = [];
    const s = await restoreOn(
      { 'node-a': 16, 'node-b': 8 },
      {
        'node-a': {
          criuRestore: hang(calls, 'criuRestore node-a'),
          inspectRestore: async () => {
            calls.push('inspectRestore node-a');
            return inspection({ cuda: 'failed' });
          },
          killProcess: async (i) => {
            calls.push(`killProcess node-a ${i.pid}/${i.startTime}`);
            return { killed: true };
          },
        },
      },
      { checkpointId: 'lost3' },
      calls,
    );
    expect(s.phase).toBe('Running');
    expect(s.node).toBe('node-b');
    expect(calls.indexOf('killProcess node-a 778/9')).toBeGreaterThan(calls.indexOf('inspectRestore node-a'));
    expect(calls.indexOf('killProcess node-a 778/9')).toBeLessThan(calls.indexOf('reserve node-b'));
    expect(s.attempts[0]).toMatchObject({ node: 'node-a', outcome: 'failed', phase: 'RestoringProcess' });
    expect(s.attempts[0].reason).toMatch(/pid 778 on node-a: CUDA state failed after the agent was lost/);
    expect(s.excluded).toEqual(['node-a']);
  });

  test('CRIU created nothing that runs: placed elsewhere only after the node said so, nothing to kill', async () => {
    const calls: string[] = [];
    const s = await restoreOn(
      { 'node-a': 16, 'node-b': 8 },
      {
        'node-a': {
          criuRestore: hang(calls, 'criuRestore node-a'),
          inspectRestore: async () => {
            calls.push('inspectRestore node-a');
            return inspection({ process: null, running: false, state: null });
          },
        },
      },
      { checkpointId: 'lost4' },
      calls,
    );
    expect(s.phase).toBe('Running');
    expect(s.node).toBe('node-b');
    expect(calls.indexOf('inspectRestore node-a')).toBeLessThan(calls.indexOf('reserve node-b'));
    expect(calls.some((c) => c.startsWith('killProcess'))).toBe(false);
    expect(s.attempts[0].reason).toMatch(
      /criuRestore: HEARTBEAT timeout; node-a reports nothing of this attempt running \(CRIU interrupted\)/,
    );
    expect(s.excluded).toEqual(['node-a']);
  });

  test('CRIU killed mid-restore by an agent shutting down: the node is asked, and the copy CRIU had resumed is carried on', async () => {
    const calls: string[] = [];
    const s = await restoreOn(
      { 'node-a': 16, 'node-b': 16 },
      {
        'node-a': {
          criuRestore: async () => {
            calls.push('criuRestore node-a');
            throw ApplicationFailure.nonRetryable('criu restore killed by SIGKILL', 'CriuInterrupted');
          },
          inspectRestore: async () => {
            calls.push('inspectRestore node-a');
            return inspection({ criu: 'failed', failure: { type: 'CriuInterrupted', message: 'killed' } });
          },
        },
      },
      { checkpointId: 'lost7' },
      calls,
    );
    expect(s.phase).toBe('Running');
    expect(s.node).toBe('node-a');
    expect(calls.slice(2, 5)).toEqual(['criuRestore node-a', 'inspectRestore node-a', 'checkVram node-a']);
    expect(calls.filter((c) => c.startsWith('alert'))).toEqual([]);
  });

  test('the journal says CRIU failed deterministically: its own error decides (alert, no other node)', async () => {
    const calls: string[] = [];
    const err = await restoreOn(
      { 'node-a': 16, 'node-b': 16 },
      {
        'node-a': {
          criuRestore: hang(calls, 'criuRestore node-a'),
          inspectRestore: async () =>
            inspection({
              criu: 'failed',
              process: null,
              running: false,
              state: null,
              failure: { type: 'CriuRestoreFailed', message: 'criu restore failed: Unsupported image version' },
            }),
        },
      },
      { checkpointId: 'lost5' },
      calls,
    ).catch((e: unknown) => e);
    expect(((err as WorkflowFailedError).cause as ApplicationFailure).type).toBe('CriuRestoreFailed');
    expect(calls).toContain('alert CriuRestoreFailed node-a');
    expect(calls.filter((c) => c.startsWith('reserve'))).toEqual(['reserve node-a']);
  });

  test('the agent stays away: the restore waits for it (up to 7 days), and never places a second copy meanwhile', async () => {
    const calls: string[] = [];
    const free = { 'node-a': 16, 'node-b': 16 };
    const answered = inspection({ cuda: 'running' });
    /** node-a's agent: a worker on node/node-a that polls only while `during` runs. */
    const agentA = async (acts: NodeMock, during: () => Promise<void>): Promise<void> => {
      const w = await h.nodeWorker('node-a', acts);
      await w.runUntil(during);
    };
    await h.with(control(calls, free), { 'node-b': nodeMock(calls, 'node-b') }, async () => {
      const wf = await h.env.client.workflow.start('restore', {
        workflowId: restoreWorkflowId('lost6', ++seq),
        taskQueue: CONTROL_QUEUE,
        args: [{ checkpointId: 'lost6' }],
      });
      // The agent dies while CRIU runs: its activity stops heartbeating and times out. (This agent knows no
      // inspectRestore (nodeMock has none): a question that reaches it fails and is asked again later.)
      await agentA(nodeMock(calls, 'node-a', { criuRestore: hang(calls, 'criuRestore node-a') }), async () => {
        const timedOut = async (): Promise<boolean> =>
          ((await wf.fetchHistory()).events ?? []).some((e) => e.activityTaskTimedOutEventAttributes);
        while (!(await timedOut())) await h.env.sleep('1s');
      });
      // Nobody polls node/node-a now. The test server does not skip time while a task is queued, so the agent is
      // away for 20 real seconds here; how long the restore would wait is in the question it queued: 7 days,
      // with no schedule-to-start timeout of its own.
      await new Promise((r) => setTimeout(r, 20000));
      const asked = ((await wf.fetchHistory()).events ?? [])
        .map((e) => e.activityTaskScheduledEventAttributes)
        .filter((a) => a?.activityType?.name === 'inspectRestore');
      expect(asked.length).toBeGreaterThan(0);
      expect(Number(asked[0]?.scheduleToCloseTimeout?.seconds)).toBe(7 * 24 * 3600);
      expect(Number(asked[0]?.scheduleToStartTimeout?.seconds ?? 7 * 24 * 3600)).toBe(7 * 24 * 3600);
      const during = await wf.query<RestoreStatus>('status');
      expect(during.phase).toBe('RestoringProcess');
      expect(during.node).toBe('node-a');
      expect(calls.filter((c) => c.endsWith('node-b'))).toEqual([]);
      // The agent is back: asked, it reports CRIU's process running, and the restore carries on with it.
      await agentA(
        nodeMock(calls, 'node-a', {
          inspectRestore: async () => {
            calls.push('inspectRestore node-a');
            return answered;
          },
        }),
        async () => {
          const s = (await wf.result()) as RestoreStatus;
          expect(s.phase).toBe('Running');
          expect(s.node).toBe('node-a');
          expect(s.pid).toBe(778);
        },
      );
    });
    expect(calls.filter((c) => c.endsWith('node-b'))).toEqual([]);
    // CUDA already running: straight to Verifying.
    expect(calls.slice(-3)).toEqual(['inspectRestore node-a', 'verifyRunning node-a', 'adoptWorkload node-a']);
  });
});

describe('restore: VRAM reservation release', () => {
  test('a release that fails after Running: still Running, the failure recorded', async () => {
    const calls: string[] = [];
    const s = await restoreOn({ 'node-a': 16 }, {}, { checkpointId: 'rel1' }, calls, {
      release: async () => {
        calls.push('release');
        throw ApplicationFailure.nonRetryable('placement workflow unreachable', 'Unavailable');
      },
    });
    expect(s.phase).toBe('Running');
    expect(calls.at(-1)).toBe('release');
    expect(s.releaseFailures).toHaveLength(1);
    expect(s.releaseFailures?.[0]).toMatch(
      /reservation restore\/rel1\/\d+\/1 not released: .*placement workflow unreachable/,
    );
  });

  test('a release that fails for a while is retried until it goes through, without failing the restore', async () => {
    const calls: string[] = [];
    const s = await restoreOn({ 'node-a': 16 }, {}, { checkpointId: 'rel2' }, calls, {
      release: async () => {
        calls.push('release');
        if (calls.filter((c) => c === 'release').length <= 12) throw new Error('control plane busy');
      },
    });
    expect(s.phase).toBe('Running');
    expect(calls.filter((c) => c === 'release')).toHaveLength(13); // more than the 10 tries of the other control calls
    expect(s.releaseFailures).toBeUndefined();
  });
});

describe('restore: verifying means running (and ready when a probe is declared), not busy', () => {
  const ready = { tcpSocket: { port: 6379 }, periodSeconds: 1, failureThreshold: 3 };

  test('no probe declared: verifyRunning is asked only whether that very process runs', async () => {
    const seen: unknown[] = [];
    const s = await restoreOn(
      { 'node-a': 16 },
      {
        'node-a': {
          verifyRunning: async (i) => {
            seen.push(i);
            return { state: 'S', cuda: 'none', probes: 0, afterMs: 1000, detail: 'idle' };
          },
        },
      },
      { checkpointId: 'idle1' },
    );
    expect(s.phase).toBe('Running');
    expect(seen).toEqual([{ pid: 777, startTime: 5000 }]);
  });

  test('probe passing: Running, the probe handed to the node', async () => {
    const seen: unknown[] = [];
    const s = await restoreOn(
      { 'node-a': 16 },
      {
        'node-a': {
          verifyRunning: async (i) => {
            seen.push(i);
            return { state: 'S', cuda: 'none', probes: 2, afterMs: 1000, detail: 'connected' };
          },
        },
      },
      { checkpointId: 'ready1', readiness: ready },
    );
    expect(s.phase).toBe('Running');
    expect(seen).toEqual([{ pid: 777, startTime: 5000, readiness: ready }]);
  });

  test('probe failing: the attempt fails, the process is killed by identity, the restore lands elsewhere', async () => {
    const calls: string[] = [];
    const s = await restoreOn(
      { 'node-a': 16, 'node-b': 8 },
      {
        'node-a': {
          verifyRunning: async () => {
            calls.push('verifyRunning node-a');
            throw ApplicationFailure.nonRetryable(
              'readiness probe (tcp 127.0.0.1:6379) failed 3 times in a row',
              'NotReady',
            );
          },
          killProcess: async (i) => {
            calls.push(`killProcess node-a ${i.pid}/${i.startTime}`);
            return { killed: true };
          },
        },
      },
      { checkpointId: 'ready2', readiness: ready },
      calls,
    );
    expect(s.phase).toBe('Running');
    expect(s.node).toBe('node-b');
    expect(s.attempts.map((a) => `${a.node}:${a.outcome}:${a.phase}`)).toEqual([
      'node-a:failed:Verifying',
      'node-b:running:Running',
    ]);
    expect(s.attempts[0].reason).toMatch(/NotReady/);
    expect(calls.indexOf('killProcess node-a 777/5000')).toBeGreaterThan(calls.indexOf('verifyRunning node-a'));
    expect(calls.indexOf('killProcess node-a 777/5000')).toBeLessThan(calls.indexOf('reserve node-b'));
    expect(calls).not.toContain('adoptWorkload node-a');
  });

  test('a malformed probe fails the restore naming the field, before anything is placed', async () => {
    const calls: string[] = [];
    const err = await restoreOn(
      { 'node-a': 16 },
      {},
      { checkpointId: 'ready3', readiness: { tcpSocket: { port: 0 } } },
      calls,
    ).catch((e: unknown) => e);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('InvalidInput');
    expect(cause.message).toMatch(/^invalid restore request: readiness\.tcpSocket\.port: /);
    expect(calls).toEqual([]);
  });
});

describe('migration workflow', () => {
  const ckptNode = (calls: string[]): NodeMock => ({
    resolveTarget: async () => ({ pid: 4242 }),
    cudaLock: async () => ({ outcome: 'skipped' as const, detail: 'no CUDA' }),
    criuDump: async () => {
      calls.push('criuDump node-a');
      return { imageBytes: 1, durationMs: 1, processStopped: true };
    },
    seal: async () => ({ files: 1, totalBytes: 1, metadataSha256: 'x' }),
    upload: async () => ({ bucket: 'b', prefix: 'p', bytesSent: 1, partsSent: 1, partsResumed: 0 }),
  });
  const ctlFromCheckpoint = (): ControlMock => ({
    checkpointInfo: async ({ checkpointId }) => {
      const s = await h.env.client.workflow.getHandle(`checkpoint/${checkpointId}`).query<CheckpointStatus>('status');
      return { checkpointId, jobId: s.jobId, node: s.node, tier: s.tier, vramBytes: s.vramBytes };
    },
  });

  async function migrate(overB: NodeMock, calls: string[], ctl: ControlMock = {}): Promise<MigrateStatus> {
    const nodes = {
      'node-a': { ...nodeMock(calls, 'node-a'), ...ckptNode(calls) },
      'node-b': nodeMock(calls, 'node-b', overB),
    };
    return h.with(control(calls, { 'node-a': 16, 'node-b': 16 }, { ...ctlFromCheckpoint(), ...ctl }), nodes, () =>
      h.env.client.workflow.execute('migrate', {
        workflowId: `migrate/m-${++seq}`,
        taskQueue: CONTROL_QUEUE,
        args: [{ jobId: 'job-1', from: 'node-a', to: 'node-b', checkpointId: `m-${seq}`, placementDeadline: '1m' }],
      }),
    );
  }

  test('checkpoint on A, restore on B; the migration and its stopping checkpoint ask whether a job workflow runs it, its restore (a child) never', async () => {
    const calls: string[] = [];
    const s = await migrate({}, calls, {
      jobOpen: async ({ jobId }) => {
        calls.push(`jobOpen ${jobId}`);
        return { open: false, state: null };
      },
    });
    expect(s.phase).toBe('Migrated');
    // Once by the migration, once by its checkpoint (a stopping one: see checkpoint.test.ts), both before the dump.
    expect(calls.filter((c) => c === 'jobOpen job-1')).toHaveLength(2);
    expect(calls.lastIndexOf('jobOpen job-1')).toBeLessThan(calls.indexOf('criuDump node-a'));
    expect(s.restores[0].node).toBe('node-b');
    expect(calls).toEqual(expect.arrayContaining(['criuDump node-a', 'reserve node-b', 'adoptWorkload node-b']));
    expect(calls).not.toContain('criuRestore node-a');
  });

  test('a job still run by its job workflow is refused before anything is touched (JobOpen): moved from outside, it would run twice', async () => {
    const calls: string[] = [];
    const err = await migrate({}, calls, {
      jobOpen: async ({ jobId }) => {
        calls.push(`jobOpen ${jobId}`);
        return { open: true, state: 'Running' };
      },
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('JobOpen');
    expect(cause.message).toMatch(
      /^job job-1 is run by its job workflow \(state Running\): moved from outside it would run twice; move it with 'kybernate migrate job-1 --to node-b'/,
    );
    expect(statusFromFailure(err, isMigrateStatus)).toMatchObject({ phase: 'Failed', checkpoint: null, restores: [] });
    expect(calls).toContain('jobOpen job-1');
    expect(calls.filter((c) => /^(criuDump|cudaLock|lockCuda|reserve|criuRestore)/.test(c))).toEqual([]);
  });

  test('whether the job is open cannot be told: the migration fails and touches nothing', async () => {
    const calls: string[] = [];
    const err = await migrate({}, calls, {
      jobOpen: async () => {
        calls.push('jobOpen');
        throw ApplicationFailure.nonRetryable('Temporal unreachable', 'Unavailable');
      },
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('MigrationFailed');
    expect(cause.message).toMatch(
      /^could not tell whether job job-1 is still open, so nothing was touched: .*Temporal unreachable/,
    );
    expect(calls.filter((c) => /^(criuDump|reserve|criuRestore)/.test(c))).toEqual([]);
  });

  test('the restore fails everywhere else: compensated by restoring on A', async () => {
    const calls: string[] = [];
    const s = await migrate({ checkVram: oom(calls, 'node-b') }, calls);
    expect(s.phase).toBe('RestoredOnSource');
    expect(s.failureReason).toMatch(/no node fits/);
    expect(s.restores.at(-1)?.node).toBe('node-a');
    expect(calls.indexOf('killProcess node-b')).toBeLessThan(calls.indexOf('criuRestore node-a'));
  });

  test('releasing the reservation on B fails after B runs it: Migrated, never restored a second time on A', async () => {
    const calls: string[] = [];
    const s = await migrate({}, calls, {
      release: async () => {
        calls.push('release');
        throw ApplicationFailure.nonRetryable('placement workflow unreachable', 'Unavailable');
      },
    });
    expect(s.phase).toBe('Migrated');
    expect(s.restores).toHaveLength(1);
    expect(s.restores[0]).toMatchObject({ node: 'node-b', phase: 'Running' });
    expect(s.restores[0].releaseFailures).toHaveLength(1);
    expect(calls).not.toContain('criuRestore node-a');
  });

  test('the agent on B lost mid-restore and never answering: the migration fails, and does not restore on A beside a copy that may run on B', async () => {
    const calls: string[] = [];
    const err = await migrate(
      {
        criuRestore: hang(calls, 'criuRestore node-b'),
        inspectRestore: async () => {
          calls.push('inspectRestore node-b');
          throw ApplicationFailure.nonRetryable('gave up', 'Unreachable');
        },
      },
      calls,
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('MigrationFailed');
    expect(cause.message).toMatch(
      /lost during RestoringProcess and never said what became of the restore.*; not restored on node-a, since a copy may run/s,
    );
    expect(calls).toContain('inspectRestore node-b');
    expect(calls).not.toContain('criuRestore node-a');
  });

  test('the checkpoint on A fails: its workflow and the migration fail (FAILED in the UI), each with its status in the failure', async () => {
    const calls: string[] = [];
    const n = seq + 1;
    const err = await h
      .with(
        control(calls, { 'node-a': 16, 'node-b': 16 }, ctlFromCheckpoint()),
        {
          'node-a': {
            ...nodeMock(calls, 'node-a'),
            ...ckptNode(calls),
            criuDump: async () => {
              calls.push('criuDump node-a');
              throw ApplicationFailure.nonRetryable('criu dump failed: unsupported fd', 'CriuDumpFailed');
            },
            deleteCheckpointDir: async () => {
              calls.push('deleteCheckpointDir node-a');
              return { deleted: true };
            },
          },
          'node-b': nodeMock(calls, 'node-b'),
        },
        () =>
          h.env.client.workflow.execute('migrate', {
            workflowId: `migrate/m-${++seq}`,
            taskQueue: CONTROL_QUEUE,
            args: [{ jobId: 'job-1', from: 'node-a', to: 'node-b', checkpointId: `m-${seq}`, placementDeadline: '1m' }],
          }),
      )
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('MigrationFailed');
    const m = statusFromFailure(err, isMigrateStatus);
    expect(m).toMatchObject({ phase: 'Failed', checkpoint: { phase: 'Failed' }, restores: [] });
    expect(m?.failureReason).toMatch(/^checkpoint failed: DumpingProcess: .*CriuDumpFailed/);
    expect((await h.env.client.workflow.getHandle(`migrate/m-${n}`).describe()).status.name).toBe('FAILED');
    const child = h.env.client.workflow.getHandle(`checkpoint/m-${n}`);
    expect((await child.describe()).status.name).toBe('FAILED');
    expect(await finalStatus('checkpoint', child)).toMatchObject({ phase: 'Failed', checkpointId: `m-${n}` });
    expect(calls).not.toContain('reserve node-b');
  });
});
