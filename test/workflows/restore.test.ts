import { ApplicationFailure } from '@temporalio/activity';
import { WorkflowFailedError } from '@temporalio/client';
import type { CheckpointStatus } from '../../common/checkpoint';
import { CONTROL_QUEUE, restoreWorkflowId } from '../../common/queues';
import type { Candidate, Reservation, RestoreRequest, RestoreStatus } from '../../common/restore';
import type { MigrateStatus } from '../../workflows/migrate';
import { type ControlMock, Harness, type NodeMock } from './harness';

let h: Harness;
beforeAll(async () => {
  h = await Harness.create();
  await restoreOn({ 'node-a': 16 }, {}, { checkpointId: 'warmup' }).catch(() => undefined);
}, 120000);
afterAll(async () => h?.teardown());

const GiB = 1024 ** 3;

/**
 * Control activities over an in-memory cluster: nodes with free VRAM (GiB), the checkpoint taken on node-a,
 * reservations as the placement workflow makes them. `calls` records every activity, node-qualified.
 */
function control(calls: string[], free: Record<string, number>, over: ControlMock = {}): ControlMock {
  const held = new Map<string, Reservation>();
  return {
    checkpointInfo: async ({ checkpointId }) => ({ checkpointId, jobId: 'job-1', node: 'node-a', tier: 's3', vramBytes: 6 * GiB }),
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
    raiseAlert: async (a) => {
      calls.push(`alert ${a.kind} ${a.node}`);
      return `alert/${a.kind}/${a.checkpointId}/x`;
    },
    ...over,
  };
}

function nodeMock(calls: string[], name: string, over: NodeMock = {}): NodeMock {
  const rec = <T>(what: string, v: T) => async (): Promise<T> => {
    calls.push(`${what} ${name}`);
    return v;
  };
  return {
    fetch: async ({ checkpointId }) => {
      calls.push(`fetch ${name}`);
      return { dir: `/data/${name}/checkpoints/${checkpointId}`, bytes: 100, source: name === 'node-a' ? 'nvme' as const : 's3' as const, staged: false, jobId: 'job-1', vramBytes: 6 * GiB };
    },
    criuRestore: rec('criuRestore', { pid: 777 }),
    checkVram: rec('checkVram', { freeVramBytes: 16 * GiB }),
    cudaRestore: rec('cudaRestore', { outcome: 'done' as const, detail: 'restored' }),
    cudaUnlock: rec('cudaUnlock', { outcome: 'done' as const, detail: 'unlocked' }),
    verifyProgress: rec('verifyProgress', { cpuTicks: 3, bytesWritten: 10, afterMs: 200 }),
    adoptWorkload: rec('adoptWorkload', undefined),
    killProcess: rec('killProcess', { killed: true }),
    releaseStaging: rec('releaseStaging', { released: true }),
    ...over,
  };
}

let seq = 0;
async function restoreOn(free: Record<string, number>, overrides: Record<string, NodeMock>, req: RestoreRequest, calls: string[] = [], ctl: ControlMock = {}): Promise<RestoreStatus> {
  const nodes = Object.fromEntries(Object.keys(free).map((n) => [n, nodeMock(calls, n, overrides[n])]));
  return h.with(control(calls, free, ctl), nodes, () =>
    h.env.client.workflow.execute('restore', { workflowId: restoreWorkflowId(req.checkpointId, ++seq), taskQueue: CONTROL_QUEUE, args: [req] }));
}

const oom = (calls: string[], name: string) => async (): Promise<never> => {
  calls.push(`checkVram ${name}`);
  throw ApplicationFailure.create({ message: `node ${name} has 2 GiB of VRAM free, 6 GiB needed`, type: 'CudaOutOfMemory', nonRetryable: true });
};

describe('restore workflow', () => {
  test('lands on the node holding a local copy: fetch, CRIU, VRAM check, CUDA restore, unlock, verify, then Running', async () => {
    const calls: string[] = [];
    const s = await restoreOn({ 'node-a': 16, 'node-b': 32 }, {}, { checkpointId: 'ck1' }, calls);
    expect(s.phase).toBe('Running');
    expect(s.node).toBe('node-a');
    expect(s.pid).toBe(777);
    expect(s.source).toBe('nvme');
    expect(calls).toEqual(['reserve node-a', 'fetch node-a', 'criuRestore node-a', 'checkVram node-a', 'cudaRestore node-a', 'cudaUnlock node-a', 'verifyProgress node-a', 'adoptWorkload node-a']);
  });

  test('fetched into memory: the staged copy is freed after Running, and after a failed attempt too', async () => {
    const calls: string[] = [];
    const staged = (name: string) => async ({ checkpointId }: { checkpointId: string }) => {
      calls.push(`fetch ${name}`);
      return { dir: `/dev/shm/${name}/${checkpointId}`, bytes: 100, source: 's3' as const, staged: true, jobId: 'job-1', vramBytes: 6 * GiB };
    };
    const s = await restoreOn({ 'node-a': 8, 'node-b': 16 }, {
      'node-a': { fetch: staged('node-a'), checkVram: oom(calls, 'node-a') }, 'node-b': { fetch: staged('node-b') },
    }, { checkpointId: 'ck-staged' }, calls);
    expect(s.phase).toBe('Running');
    expect(calls.filter((c) => c.startsWith('releaseStaging'))).toEqual(['releaseStaging node-a', 'releaseStaging node-b']);
    expect(calls.at(-1)).toBe('releaseStaging node-b');
    expect(calls.indexOf('adoptWorkload node-b')).toBeLessThan(calls.indexOf('releaseStaging node-b'));
  });

  test('only nodes with enough free VRAM are candidates', async () => {
    const calls: string[] = [];
    const s = await restoreOn({ 'node-a': 4, 'node-b': 8 }, {}, { checkpointId: 'ck2' }, calls);
    expect(s.node).toBe('node-b');
    expect(calls[0]).toBe('reserve node-b');
  });

  test('VRAM out of memory: the half-restored process is killed, the node excluded, and the restore lands on the next node', async () => {
    const calls: string[] = [];
    const s = await restoreOn({ 'node-a': 8, 'node-b': 16 }, { 'node-a': { checkVram: oom(calls, 'node-a') } }, { checkpointId: 'ck3' }, calls);
    expect(s.phase).toBe('Running');
    expect(s.node).toBe('node-b');
    expect(s.attempts.map((a) => `${a.node}:${a.outcome}:${a.phase}`)).toEqual(['node-a:failed:RestoringVram', 'node-b:running:Running']);
    expect(s.excluded).toEqual(['node-a']);
    expect(calls).toContain('killProcess node-a');
    expect(calls.indexOf('killProcess node-a')).toBeLessThan(calls.indexOf('reserve node-b'));
    expect(calls).not.toContain('cudaRestore node-a');
  });

  test('a CUDA restore that fails is never reported Running: killed, Failed', async () => {
    const calls: string[] = [];
    const err = await restoreOn({ 'node-a': 16 }, {
      'node-a': { cudaRestore: async () => { calls.push('cudaRestore node-a'); throw ApplicationFailure.nonRetryable('CUresult 999', 'CudaError'); } },
    }, { checkpointId: 'ck4' }, calls).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    expect(calls).toContain('killProcess node-a');
    expect(calls).not.toContain('verifyProgress node-a');
  });

  test('deterministic CRIU failure: non-retryable, alert raised, no other node tried', async () => {
    const calls: string[] = [];
    const err = await restoreOn({ 'node-a': 16, 'node-b': 16 }, {
      'node-a': { criuRestore: async () => { calls.push('criuRestore node-a'); throw ApplicationFailure.nonRetryable('criu restore failed: Error (criu/cr-restore.c): Unsupported image version', 'CriuRestoreFailed'); } },
    }, { checkpointId: 'ck5' }, calls).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('CriuRestoreFailed');
    expect(cause.nonRetryable).toBe(true);
    expect(calls).toContain('alert CriuRestoreFailed node-a');
    expect(calls.filter((c) => c.startsWith('reserve'))).toEqual(['reserve node-a']);
  });

  test('checksum mismatch in the S3 copy: the nvme copy on the checkpoint node is used instead', async () => {
    const calls: string[] = [];
    const s = await restoreOn({ 'node-a': 16, 'node-b': 16 }, {
      'node-b': { fetch: async () => { calls.push('fetch node-b'); throw ApplicationFailure.nonRetryable('images/pages-1.img: S3 copy has sha256 00.., metadata.json says ab..', 'ChecksumMismatch'); } },
    }, { checkpointId: 'ck6', prefer: ['node-b'], node: undefined }, calls, {
      checkpointInfo: async ({ checkpointId }) => ({ checkpointId, jobId: 'job-1', node: 'node-a', tier: 's3', vramBytes: 6 * GiB }),
      placementCandidates: async ({ exclude, only }) =>
        (['node-b', 'node-a'] as const).filter((n) => !exclude.includes(n) && (!only || only === n)).map((node) => ({ node, freeVramBytes: 16 * GiB, vramSource: 'declared' as const })),
    });
    expect(s.phase).toBe('Running');
    expect(s.node).toBe('node-a');
    expect(s.source).toBe('nvme');
    expect(s.attempts[0]).toMatchObject({ node: 'node-b', outcome: 'failed', phase: 'Fetching' });
    expect(calls).not.toContain('criuRestore node-b');
  });

  test('checksum mismatch with no other good copy: fails as corrupt, nothing restored', async () => {
    const calls: string[] = [];
    const bad = async (): Promise<never> => { calls.push('fetch'); throw ApplicationFailure.nonRetryable('sha256 mismatch', 'ChecksumMismatch'); };
    const err = await restoreOn({ 'node-a': 16 }, { 'node-a': { fetch: bad } }, { checkpointId: 'ck7' }, calls).catch((e: unknown) => e);
    expect(((err as WorkflowFailedError).cause as ApplicationFailure).type).toBe('ChecksumMismatch');
    expect(calls.some((c) => c.startsWith('criuRestore'))).toBe(false);
  });

  test('a checkpoint still on tier nvme is restored only on its own node', async () => {
    const calls: string[] = [];
    const nvme: ControlMock = { checkpointInfo: async ({ checkpointId }) => ({ checkpointId, jobId: 'job-1', node: 'node-a', tier: 'nvme', vramBytes: 0 }) };
    const s = await restoreOn({ 'node-a': 16, 'node-b': 64 }, {}, { checkpointId: 'ck9', prefer: ['node-b'] }, calls, nvme);
    expect(s.node).toBe('node-a');
    expect(calls.filter((c) => c.endsWith('node-b'))).toEqual([]);
    const err = await restoreOn({ 'node-a': 16, 'node-b': 64 }, {}, { checkpointId: 'ck10', node: 'node-b' }, [], nvme).catch((e: unknown) => e);
    expect(((err as WorkflowFailedError).cause as ApplicationFailure).type).toBe('CheckpointNotOnNode');
  });

  test('no node fits: waits until the placement deadline, then fails with the reason', async () => {
    const calls: string[] = [];
    const started = Date.now();
    const err = await restoreOn({ 'node-a': 2 }, {}, { checkpointId: 'ck8', placementDeadline: '5m' }, calls).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('NoNodeFits');
    expect(cause.message).toMatch(/no node fits: 6442450944 bytes of VRAM needed.*waited 5m/);
    expect(Date.now() - started).toBeLessThan(60000); // five minutes of workflow time, skipped
  });
});

describe('migration workflow', () => {
  const ckptNode = (calls: string[]): NodeMock => ({
    resolveTarget: async () => ({ pid: 4242 }),
    cudaLock: async () => ({ outcome: 'skipped' as const, detail: 'no CUDA' }),
    criuDump: async () => { calls.push('criuDump node-a'); return { imageBytes: 1, durationMs: 1, processStopped: true }; },
    seal: async () => ({ files: 1, totalBytes: 1, metadataSha256: 'x' }),
    upload: async () => ({ bucket: 'b', prefix: 'p', bytesSent: 1, partsSent: 1, partsResumed: 0 }),
  });
  const ctlFromCheckpoint = (): ControlMock => ({
    checkpointInfo: async ({ checkpointId }) => {
      const s = await h.env.client.workflow.getHandle(`checkpoint/${checkpointId}`).query<CheckpointStatus>('status');
      return { checkpointId, jobId: s.jobId, node: s.node, tier: s.tier, vramBytes: s.vramBytes };
    },
  });

  async function migrate(overB: NodeMock, calls: string[]): Promise<MigrateStatus> {
    const nodes = { 'node-a': { ...nodeMock(calls, 'node-a'), ...ckptNode(calls) }, 'node-b': nodeMock(calls, 'node-b', overB) };
    return h.with(control(calls, { 'node-a': 16, 'node-b': 16 }, ctlFromCheckpoint()), nodes, () =>
      h.env.client.workflow.execute('migrate', {
        workflowId: `migrate/m-${++seq}`, taskQueue: CONTROL_QUEUE, args: [{ jobId: 'job-1', from: 'node-a', to: 'node-b', checkpointId: `m-${seq}`, placementDeadline: '1m' }],
      }));
  }

  test('checkpoint on A, restore on B', async () => {
    const calls: string[] = [];
    const s = await migrate({}, calls);
    expect(s.phase).toBe('Migrated');
    expect(s.restores[0].node).toBe('node-b');
    expect(calls).toEqual(expect.arrayContaining(['criuDump node-a', 'reserve node-b', 'adoptWorkload node-b']));
    expect(calls).not.toContain('criuRestore node-a');
  });

  test('the restore fails everywhere else: compensated by restoring on A', async () => {
    const calls: string[] = [];
    const s = await migrate({ checkVram: oom(calls, 'node-b') }, calls);
    expect(s.phase).toBe('RestoredOnSource');
    expect(s.failureReason).toMatch(/no node fits/);
    expect(s.restores.at(-1)?.node).toBe('node-a');
    expect(calls.indexOf('killProcess node-b')).toBeLessThan(calls.indexOf('criuRestore node-a'));
  });
});
