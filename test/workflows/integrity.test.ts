import { ApplicationFailure, Context } from '@temporalio/activity';
import { WorkflowFailedError } from '@temporalio/client';
import { finalStatus } from '../../clients/outcome';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { createControlActivities } from '../../activities/control';
import type { CheckpointRequest, CheckpointStatus, UploadResult } from '../../common/checkpoint';
import { checkpointWorkflowId, CONTROL_QUEUE, promotionWorkflowId, restoreWorkflowId } from '../../common/queues';
import type { RestoreStatus } from '../../common/restore';
import type { PromotionStatus } from '../../common/promotion';
import { Harness, type NodeMock } from './harness';

/** Integrity branches of the checkpoint, promotion and restore workflows, with mocked node activities. */
let h: Harness;
let env: TestWorkflowEnvironment;

beforeAll(async () => {
  h = await Harness.create();
  env = h.env;
  await run(node([]), req()).catch(() => undefined); // warm-up (see checkpoint.test.ts)
}, 120000);
afterAll(async () => h?.teardown());
afterEach(async () => h?.reset());

const uploaded: UploadResult = { bucket: 'b', prefix: 'checkpoints/c/', bytesSent: 100, partsSent: 3, partsResumed: 0 };
const MD_SHA = 'ab'.repeat(32);

function node(calls: string[], overrides: NodeMock = {}): NodeMock {
  const rec =
    <T>(name: string, value: T) =>
    async (): Promise<T> => {
      calls.push(name);
      return value;
    };
  return {
    resolveTarget: async (i) => {
      calls.push('resolveTarget');
      return { pid: i.pid ?? 4242 };
    },
    cudaLock: rec('cudaLock', { outcome: 'skipped' as const, detail: 'no CUDA context' }),
    cudaRestore: rec('cudaRestore', { outcome: 'done' as const, detail: 'restored' }),
    cudaUnlock: rec('cudaUnlock', { outcome: 'done' as const, detail: 'unlocked' }),
    criuDump: async (i) => {
      calls.push('criuDump');
      return { imageBytes: 1000, durationMs: 5, processStopped: !i.leaveRunning };
    },
    seal: rec('seal', { files: 3, totalBytes: 1000, metadataSha256: MD_SHA }),
    upload: rec('upload', uploaded),
    criuRestore: rec('criuRestore', { pid: 4242, startTime: 1 }),
    killProcess: rec('killProcess', { killed: true }),
    deleteCheckpointDir: rec('deleteCheckpointDir', { deleted: true }),
    setAsideCorrupt: rec('setAsideCorrupt', { movedTo: '/data/corrupt/x' }),
    persist: async (i) => {
      calls.push(i.sync ? 'persist sync' : 'persist');
      return { bytes: 1000, durationMs: 7 };
    },
    releaseStaging: rec('releaseStaging', { released: true }),
    ...overrides,
  };
}

const req = (over: Partial<CheckpointRequest> = {}): CheckpointRequest => ({
  checkpointId: `ck-${Math.random().toString(36).slice(2, 8)}`,
  jobId: 'job-1',
  node: 'node-a',
  pid: 4242,
  leaveRunning: false,
  reason: 'manual',
  ...over,
});

async function run(
  mock: NodeMock,
  request: CheckpointRequest,
  during?: () => Promise<void>,
): Promise<CheckpointStatus> {
  return h.with(createControlActivities(env.client), { [request.node]: mock }, async () => {
    const wf = await env.client.workflow.start('checkpoint', {
      workflowId: checkpointWorkflowId(request.checkpointId),
      taskQueue: CONTROL_QUEUE,
      args: [request],
    });
    if (during) await during();
    const s = await finalStatus('checkpoint', wf);
    // A checkpoint that ended Failed fails its workflow; its status rides in the failure.
    expect((await wf.describe()).status.name).toBe(s.phase === 'Failed' ? 'FAILED' : 'COMPLETED');
    return s;
  });
}

const mismatch = (calls: string[]) => async (): Promise<never> => {
  calls.push('upload');
  throw ApplicationFailure.nonRetryable(
    'images/pages-1.img: the local copy has sha256 00.., sealed as ff..: changed after sealing; upload aborted',
    'ChecksumMismatch',
  );
};

describe('checkpoint: the upload finds the local copy changed after sealing', () => {
  test('stopped by the dump: Failed (never Durable, never PendingUpload), the workload recorded lost, the corrupt copy set aside, no retry, no re-seal', async () => {
    const calls: string[] = [];
    const phases: string[] = [];
    const r = req();
    const s = await run(node(calls, { upload: mismatch(calls) }), r, async () => {
      const wf = env.client.workflow.getHandle(checkpointWorkflowId(r.checkpointId));
      for (let i = 0; i < 50; i++) {
        const st = await wf.query<CheckpointStatus>('status').catch(() => null);
        if (st && phases.at(-1) !== st.phase) phases.push(st.phase);
        if (st?.phase === 'Failed') break;
        await new Promise((res) => setTimeout(res, 50));
      }
    });
    expect(s.phase).toBe('Failed');
    expect(s.tier).not.toBe('s3');
    expect(phases).not.toContain('Durable');
    expect(phases).not.toContain('PendingUpload');
    expect(s.failureReason).toMatch(/no longer matches its seal.*ChecksumMismatch.*images\/pages-1\.img/);
    expect(s.workloadLost).toMatch(/pid 4242 was stopped by the dump/);
    expect(calls).toEqual(['resolveTarget', 'cudaLock', 'criuDump', 'seal', 'upload', 'setAsideCorrupt']);
    expect(s.history.at(-1)?.detail).toBe('corrupt checkpoint set aside for an operator at /data/corrupt/x');
    expect(calls).not.toContain('criuRestore'); // never restored from unverified images
  });

  test('--leave-running: Failed, the workload untouched and not lost', async () => {
    const calls: string[] = [];
    const s = await run(node(calls, { upload: mismatch(calls) }), req({ leaveRunning: true }));
    expect(s.phase).toBe('Failed');
    expect(s.workloadLost).toBeNull();
    expect(calls).not.toContain('killProcess');
    expect(calls.at(-1)).toBe('deleteCheckpointDir');
  });

  test('staged in memory: the copy to disk finishes, then the copy is set aside; Failed, never tier nvme', async () => {
    const calls: string[] = [];
    const s = await run(
      node(calls, {
        upload: mismatch(calls),
        criuDump: async (i) => {
          calls.push('criuDump');
          return { imageBytes: 1000, durationMs: 5, processStopped: !i.leaveRunning, staged: true };
        },
      }),
      req(),
    );
    expect(s.phase).toBe('Failed');
    expect(s.tier).toBe('memory');
    expect(calls.filter((c) => c.startsWith('persist'))).toEqual(['persist']); // never synced to stand in for S3
    expect(calls.at(-1)).toBe('setAsideCorrupt');
    expect(s.workloadLost).not.toBeNull();
  });

  test("the seal's metadata.json SHA-256 is recorded in the status and handed to the upload", async () => {
    const calls: string[] = [];
    const given: unknown[] = [];
    const s = await run(
      node(calls, {
        upload: async (i) => {
          given.push(i.metadataSha256);
          return uploaded;
        },
      }),
      req(),
    );
    expect(s.phase).toBe('Durable');
    expect(s.metadataSha256).toBe(MD_SHA);
    expect(given).toEqual([MD_SHA]);
  });
});

describe('checkpoint ids are never reused', () => {
  test('the node holds a checkpoint with this id: Failed in Pending, nothing dumped, nothing deleted', async () => {
    const calls: string[] = [];
    const s = await run(
      node(calls, {
        resolveTarget: async (i) => {
          calls.push(`resolveTarget ${i.checkpointId}`);
          throw ApplicationFailure.nonRetryable(`checkpoint '${i.checkpointId}' exists on node-a`, 'CheckpointExists');
        },
      }),
      req({ checkpointId: 'taken-1' }),
    ).catch((e: unknown) => e);
    expect(calls).toEqual(['resolveTarget taken-1']);
    expect(s).toBeInstanceOf(WorkflowFailedError);
    expect(((s as WorkflowFailedError).cause as ApplicationFailure).type).toBe('CheckpointExists');
    expect((s as WorkflowFailedError).cause?.message).toMatch(/^Pending: .*exists on node-a/);
  });

  test('the dump itself finds one (a race past the first check): the workload resumes, the directory is left alone', async () => {
    const calls: string[] = [];
    const s = await run(
      node(calls, {
        criuDump: async () => {
          calls.push('criuDump');
          throw ApplicationFailure.nonRetryable("checkpoint 'x' exists on node-a", 'CheckpointExists');
        },
      }),
      req(),
    );
    expect(s.phase).toBe('Failed');
    expect(calls).not.toContain('deleteCheckpointDir');
    expect(s.history.some((x) => x.outcome === 'skipped' && x.detail.includes('left alone'))).toBe(true);
  });

  test('S3 holds another checkpoint under this id (the upload refuses): the stopped workload is restored in place, our copy deleted, Failed', async () => {
    const calls: string[] = [];
    const s = await run(
      node(calls, {
        upload: async () => {
          calls.push('upload');
          throw ApplicationFailure.nonRetryable(
            "checkpoint 'x' exists in S3 (another metadata.json)",
            'CheckpointExists',
          );
        },
      }),
      req(),
    );
    expect(s.phase).toBe('Failed');
    expect(calls.slice(-3)).toEqual(['upload', 'criuRestore', 'deleteCheckpointDir']);
    expect(s.history.some((x) => x.detail === 'restored in place as pid 4242')).toBe(true);
  });
});

describe('S3 refuses the upload for good (S3Rejected)', () => {
  test("no retries by the checkpoint workflow: PendingUpload on nvme with the S3 error recorded, handed to the promotion loop (with the seal's metadata.json SHA-256)", async () => {
    const calls: string[] = [];
    const given: unknown[] = [];
    let rejecting = true;
    const r = req({ uploadMaxAttempts: 5 });
    const s = await run(
      node(calls, {
        upload: async (i) => {
          calls.push(`upload by ${Context.current().info.workflowExecution?.workflowId}`);
          given.push(i.metadataSha256);
          if (rejecting)
            throw ApplicationFailure.nonRetryable(
              'upload of checkpoint: S3 refused: NoSuchBucket: The specified bucket does not exist',
              'S3Rejected',
            );
          return uploaded;
        },
      }),
      r,
      async () => {
        const wf = env.client.workflow.getHandle(checkpointWorkflowId(r.checkpointId));
        let st: CheckpointStatus | null = null;
        for (let i = 0; i < 100 && st?.phase !== 'PendingUpload'; i++) {
          st = await wf.query<CheckpointStatus>('status');
          await new Promise((res) => setTimeout(res, 50));
        }
        expect(st?.phase).toBe('PendingUpload');
        expect(st?.tier).toBe('nvme');
        expect(st?.history.some((x) => x.outcome === 'failed' && x.detail.includes('S3Rejected'))).toBe(true);
        rejecting = false; // an operator fixes the bucket; the loop's later try succeeds
      },
    );
    expect(s.phase).toBe('Durable');
    expect(calls.filter((c) => c.endsWith(checkpointWorkflowId(r.checkpointId)))).toHaveLength(1);
    expect(calls.at(-1)).toBe(`upload by ${promotionWorkflowId('node-a')}`);
    expect(given.at(-1)).toBe(MD_SHA); // the loop's upload checks the local metadata.json against the seal too
  });
});

describe('promotion loop', () => {
  test('a rejected checkpoint does not block the ones behind it; it is retried later with backoff and promoted once S3 takes it', async () => {
    const calls: string[] = [];
    let rejectA = true;
    const mock: NodeMock = {
      upload: async ({ checkpointId }) => {
        calls.push(checkpointId);
        if (checkpointId === 'prom-a' && rejectA)
          throw ApplicationFailure.nonRetryable('S3 refused: AccessDenied', 'S3Rejected');
        return uploaded;
      },
    };
    const id = promotionWorkflowId('node-p');
    await h.with({}, { 'node-p': mock }, async () => {
      const wf = await env.client.workflow.start('promotion', {
        workflowId: id,
        taskQueue: CONTROL_QUEUE,
        args: [{ node: 'node-p', pending: ['prom-a', 'prom-b'], idleTimeout: '1m' }],
      });
      let st: PromotionStatus | null = null;
      for (let i = 0; i < 100 && !st?.promoted.includes('prom-b'); i++) {
        st = await wf.query<PromotionStatus>('status');
        await new Promise((res) => setTimeout(res, 50));
      }
      expect(st?.promoted).toEqual(['prom-b']);
      expect(st?.deferred).toEqual([
        expect.objectContaining({
          checkpointId: 'prom-a',
          attempts: 1,
          lastError: expect.stringContaining('S3Rejected'),
        }),
      ]);
      // Still refused at its next try: the backoff doubles.
      for (let i = 0; i < 600 && (await wf.query<PromotionStatus>('status')).deferred[0]?.attempts !== 2; i++)
        await env.sleep('10s');
      const second = (await wf.query<PromotionStatus>('status')).deferred[0];
      expect(second.attempts).toBe(2);
      rejectA = false;
      for (let i = 0; i < 600 && !(await wf.query<PromotionStatus>('status')).promoted.includes('prom-a'); i++)
        await env.sleep('10s');
      st = await wf.query<PromotionStatus>('status');
      expect(st.promoted).toEqual(['prom-b', 'prom-a']);
      expect(st.deferred).toEqual([]);
      await wf.terminate('test done');
    });
    expect(calls.slice(0, 3)).toEqual(['prom-a', 'prom-b', 'prom-a']);
  });

  test('a checkpoint whose nvme copy no longer matches its seal: its workflow is told, and fails with the workload recorded lost', async () => {
    const calls: string[] = [];
    const r = req({ uploadMaxAttempts: 2 });
    const s = await run(
      node(calls, {
        upload: async () => {
          const by = Context.current().info.workflowExecution?.workflowId ?? '';
          calls.push(`upload by ${by}`);
          if (by.startsWith('checkpoint/')) throw ApplicationFailure.retryable('connect ECONNREFUSED', 'S3Unavailable');
          throw ApplicationFailure.nonRetryable('images/pages-1.img: changed after sealing', 'ChecksumMismatch');
        },
      }),
      r,
    );
    expect(s.phase).toBe('Failed');
    expect(s.failureReason).toMatch(/^PendingUpload: .*ChecksumMismatch/);
    expect(s.workloadLost).not.toBeNull();
    expect(calls.at(-1)).toBe('setAsideCorrupt');
  });
});

describe('restore: metadata.json checked against its seal', () => {
  test("checkpointInfo's metadataSha256 is handed to the fetch", async () => {
    const given: unknown[] = [];
    const GiB = 1024 ** 3;
    const rest: NodeMock = {
      fetch: async (i) => {
        given.push(i.metadataSha256);
        return { dir: '/d', bytes: 1, source: 's3' as const, staged: false, jobId: 'job-1', vramBytes: 0 };
      },
      criuRestore: async () => ({ pid: 77, startTime: 1 }),
      checkVram: async () => ({ freeVramBytes: 8 * GiB }),
      cudaRestore: async () => ({ outcome: 'done' as const, detail: '' }),
      cudaUnlock: async () => ({ outcome: 'done' as const, detail: '' }),
      verifyProgress: async () => ({ cpuTicks: 1, bytesWritten: 0, afterMs: 100 }),
      verifyRunning: async () => ({ state: 'S', cuda: 'none', probes: 0, afterMs: 100, detail: 'running' }),
      adoptWorkload: async () => undefined,
    };
    const s = await h.with(
      {
        checkpointInfo: async ({ checkpointId }) => ({
          checkpointId,
          jobId: 'job-1',
          node: 'node-r',
          tier: 's3',
          vramBytes: 0,
          metadataSha256: MD_SHA,
          source: 'workflow',
        }),
        placementCandidates: async () => [{ node: 'node-r', freeVramBytes: 8 * GiB, vramSource: 'declared' }],
        jobOpen: async () => ({ open: false, state: null }),
        reserve: async ({ reservationId }) => ({ reservationId, node: 'node-r', bytes: 0 }),
        release: async () => undefined,
        // Node health reports (tested in health.test.ts) are taken and dropped here.
        reportNodeOutcome: async () => undefined,
        placementSurvey: async () => ({ nodes: [{ node: 'node-r', reason: null }], largestGpuBytes: 8 * GiB }),
      },
      { 'node-r': rest },
      () =>
        env.client.workflow.execute('restore', {
          workflowId: restoreWorkflowId('ck-sha', 1),
          taskQueue: CONTROL_QUEUE,
          args: [{ checkpointId: 'ck-sha' }],
        }),
    );
    expect((s as RestoreStatus).phase).toBe('Running');
    expect(given).toEqual([MD_SHA]);
  });
});
