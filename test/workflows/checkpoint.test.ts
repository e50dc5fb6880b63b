import { ApplicationFailure, Context } from '@temporalio/activity';
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import type { Worker } from '@temporalio/worker';
import { createControlActivities } from '../../activities/control';
import {
  CHECKPOINT_STEPS,
  type CheckpointInspection,
  type CheckpointRequest,
  type CheckpointStatus,
  type CheckpointStep,
  type DumpResult,
  type UploadResult,
} from '../../common/checkpoint';
import type { StepOutcome } from '../../common/journal';
import { checkpointWorkflowId, CONTROL_QUEUE, promotionWorkflowId } from '../../common/queues';
import { finalStatus } from '../../clients/outcome';
import { Harness, type NodeMock } from './harness';

type Mock = NodeMock;

let h: Harness;
let env: TestWorkflowEnvironment;

beforeAll(async () => {
  h = await Harness.create();
  env = h.env;
  // The first workflow task loads the bundle into a fresh VM; if time skipping jumps ahead meanwhile the
  // first test sees a spurious run timeout, so warm the worker up once before the tests proper.
  await run(node([], false), req()).catch(() => undefined);
}, 120000);

afterAll(async () => {
  await h?.teardown();
});
afterEach(async () => h?.reset());

const uploaded: UploadResult = { bucket: 'b', prefix: 'checkpoints/c/', bytesSent: 100, partsSent: 3, partsResumed: 0 };

/** A node whose every step succeeds; tests override the steps they break, and read `calls` for the order. */
function node(calls: string[], cuda: boolean, overrides: Mock = {}): Mock {
  const rec =
    <T>(name: string, value: T) =>
    async (): Promise<T> => {
      calls.push(name);
      return value;
    };
  const base: Mock = {
    resolveTarget: async (i) => {
      calls.push('resolveTarget');
      return { pid: i.pid ?? 4242, startTime: 777 };
    },
    cudaLock: rec(
      'cudaLock',
      cuda
        ? { outcome: 'done' as const, detail: 'locked' }
        : { outcome: 'skipped' as const, detail: 'no CUDA context' },
    ),
    cudaCheckpoint: rec('cudaCheckpoint', { outcome: 'done' as const, detail: 'checkpointed' }),
    cudaRestore: rec('cudaRestore', { outcome: 'done' as const, detail: 'restored' }),
    cudaUnlock: rec('cudaUnlock', { outcome: 'done' as const, detail: 'unlocked' }),
    criuDump: async (i) => {
      calls.push('criuDump');
      return { imageBytes: 1000, durationMs: 5, processStopped: !i.leaveRunning, frozenMs: 4.2 };
    },
    seal: rec('seal', { files: 3, totalBytes: 1000, metadataSha256: 'x' }),
    upload: rec('upload', uploaded),
    criuRestore: rec('criuRestore', { pid: 4242, startTime: 1 }),
    killProcess: rec('killProcess', { killed: true }),
    deleteCheckpointDir: rec('deleteCheckpointDir', { deleted: true }),
    persist: async (i) => {
      calls.push(i.sync ? 'persist sync' : 'persist');
      return { bytes: 1000, durationMs: 7 };
    },
    releaseStaging: rec('releaseStaging', { released: true }),
  };
  return { ...base, ...overrides };
}

/** A node with the memory to stage the dump: its criuDump reports the images in memory. */
function stagingNode(calls: string[], overrides: Mock = {}): Mock {
  return node(calls, false, {
    criuDump: async (i) => {
      calls.push('criuDump');
      return { imageBytes: 1000, durationMs: 5, processStopped: !i.leaveRunning, staged: true };
    },
    ...overrides,
  });
}

/** An activity that records its call and returns `value`. */
const rec =
  <T>(calls: string[], name: string, value: T) =>
  async (): Promise<T> => {
    calls.push(name);
    return value;
  };

/** An activity that records its start and end, so a test can see two of them overlap. */
const slow =
  <T>(calls: string[], name: string, ms: number, value: T) =>
  async (): Promise<T> => {
    calls.push(`${name}:start`);
    await Context.current().sleep(ms);
    calls.push(`${name}:end`);
    return value;
  };

/** An activity on an agent that died: it never heartbeats again and never returns. */
const hang = (calls: string[], name: string) => async (): Promise<never> => {
  calls.push(name);
  await Context.current().sleep(600000);
  throw new Error('unreachable');
};

/** What a dump that finished on the node reports (the journal keeps the whole result). */
const dumped: DumpResult = { imageBytes: 1000, durationMs: 5, processStopped: true };

type StepRecord = Pick<StepOutcome, 'state'> & Partial<StepOutcome>;

/** What inspectCheckpoint answers: every step 'never' unless given, the process as given, images complete or not. */
function inspection(
  steps: Partial<Record<CheckpointStep, StepRecord>>,
  proc: Partial<CheckpointInspection['process']> = {},
  complete = false,
): CheckpointInspection {
  return {
    checkpointId: 'x',
    steps: Object.fromEntries(
      CHECKPOINT_STEPS.map((st) => [st, { step: st, at: null, ...(steps[st] ?? { state: 'never' }) }]),
    ) as Record<CheckpointStep, StepOutcome>,
    process: {
      state: 'running',
      sameIdentity: true,
      pidReused: false,
      procState: 'S',
      tracerPid: null,
      cuda: 'none',
      ...proc,
    },
    images: { location: complete ? 'memory' : null, inventory: complete, complete },
    metadata: { committed: false, valid: false, error: null },
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

/**
 * S3 out of reach until the checkpoint waits on tier nvme: an upload that fails as unreachable, and a `during`
 * that waits (skipping time) for PendingUpload on nvme, hands that status to `check`, then brings S3 back.
 */
function s3DownUntilPending(
  calls: string[],
  r: CheckpointRequest,
  check: (st: CheckpointStatus) => void,
): { upload: () => Promise<typeof uploaded>; during: () => Promise<void> } {
  let s3Up = false;
  return {
    upload: async () => {
      calls.push('upload');
      if (!s3Up) throw ApplicationFailure.retryable('connect ECONNREFUSED', 'S3Unavailable');
      return uploaded;
    },
    during: async () => {
      const wf = env.client.workflow.getHandle(checkpointWorkflowId(r.checkpointId));
      for (let i = 0; i < 600 && (await wf.query<CheckpointStatus>('status')).phase !== 'PendingUpload'; i++)
        await env.sleep('1s');
      const st = await wf.query<CheckpointStatus>('status');
      expect(st.phase).toBe('PendingUpload');
      expect(st.tier).toBe('nvme');
      check(st);
      s3Up = true;
    },
  };
}

async function run(mock: Mock, request: CheckpointRequest, during?: () => Promise<void>): Promise<CheckpointStatus> {
  return h.with(createControlActivities(env.client), { [request.node]: mock }, async () => {
    const wf = await env.client.workflow.start('checkpoint', {
      workflowId: checkpointWorkflowId(request.checkpointId),
      taskQueue: CONTROL_QUEUE,
      args: [request],
    });
    if (during) await during();
    return settled(wf);
  });
}

/**
 * The final status as a client reads it (finalStatus), and the workflow's own outcome checked against it: a
 * checkpoint that ended Failed is a FAILED workflow (CheckpointFailed, its status and history in the details),
 * any other a COMPLETED one.
 */
async function settled(wf: WorkflowHandle): Promise<CheckpointStatus> {
  const s = await finalStatus('checkpoint', wf);
  const d = await wf.describe();
  expect(d.status.name).toBe(s.phase === 'Failed' ? 'FAILED' : 'COMPLETED');
  if (s.phase === 'Failed') {
    const err: unknown = await wf.result().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe('CheckpointFailed');
    expect(cause.nonRetryable).toBe(true);
    expect(cause.message).toBe(s.failureReason);
    expect(cause.details?.[1]).toEqual(s.history);
  }
  return s;
}

describe('checkpoint workflow', () => {
  test('a process without CUDA: CUDA steps skipped, dumped, sealed, uploaded: Durable on s3', async () => {
    const calls: string[] = [];
    const s = await run(node(calls, false), req());
    expect(s.phase).toBe('Durable');
    expect(s.tier).toBe('s3');
    expect(s.frozenMs).toBeUndefined(); // stopped by the dump: no pause to report
    expect(calls).toEqual(['resolveTarget', 'cudaLock', 'criuDump', 'seal', 'upload']);
    expect(s.history.map((h) => `${h.phase}:${h.outcome}`)).toEqual([
      'Locking:ok',
      'DumpingVram:skipped',
      'DumpingProcess:ok',
      'Sealing:ok',
      'Uploading:ok',
    ]);
  });

  test('a CUDA process: lock, checkpoint, dump, seal, upload in that order', async () => {
    const calls: string[] = [];
    const s = await run(node(calls, true), req());
    expect(s.phase).toBe('Durable');
    expect(calls).toEqual(['resolveTarget', 'cudaLock', 'cudaCheckpoint', 'criuDump', 'seal', 'upload']);
  });

  test('the UI: current details follow the phase (Durable: bytes sent), and a failed one says why', async () => {
    const details = async (r: CheckpointRequest, mock: Mock): Promise<string> =>
      h.with(createControlActivities(env.client), { [r.node]: mock }, async () => {
        const wf = await env.client.workflow.start('checkpoint', {
          workflowId: checkpointWorkflowId(r.checkpointId),
          taskQueue: CONTROL_QUEUE,
          args: [r],
        });
        await wf.result().catch(() => undefined);
        const meta = await wf.query<{ currentDetails?: string | null }>('__temporal_workflow_metadata');
        return meta.currentDetails ?? '';
      });
    const calls: string[] = [];
    expect(await details(req(), node(calls, true))).toMatch(/^phase: Durable \(tier s3\), 100 B sent to S3/);
    const failing = node(calls, true, {
      criuDump: async () => {
        throw ApplicationFailure.nonRetryable('criu dump failed: unsupported fd', 'CriuDumpFailed');
      },
    });
    expect(await details(req(), failing)).toMatch(
      /^phase: Failed, DumpingProcess: criuDump: CriuDumpFailed: criu dump failed: unsupported fd$/,
    );
  });

  test('--leave-running on a CUDA process: VRAM restored and unlocked after the dump', async () => {
    const calls: string[] = [];
    const s = await run(node(calls, true), req({ leaveRunning: true }));
    expect(s.phase).toBe('Durable');
    // The pause the workload felt, as the dump measured it, in the status and the phase's record.
    expect(s.frozenMs).toBe(4.2);
    expect(s.history.find((h) => h.phase === 'DumpingProcess')?.detail).toBe(
      '1000 bytes in 5 ms; the workload stood frozen 4.2 ms',
    );
    expect(calls).toEqual([
      'resolveTarget',
      'cudaLock',
      'cudaCheckpoint',
      'criuDump',
      'seal',
      'cudaRestore',
      'cudaUnlock',
      'upload',
    ]);
  });

  test('no such process: fails in Pending with NoSuchProcess before anything is touched', async () => {
    const calls: string[] = [];
    const mock = node(calls, true, {
      resolveTarget: async () => {
        calls.push('resolveTarget');
        throw ApplicationFailure.nonRetryable('no such process: pid 999999', 'NoSuchProcess');
      },
    });
    const err = await run(mock, req({ pid: 999999 })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    expect(((err as WorkflowFailedError).cause as ApplicationFailure).type).toBe('NoSuchProcess');
    expect(calls).toEqual(['resolveTarget']);
  });

  describe('a stopping checkpoint asks first whether a job workflow runs the process (its own are preemptions)', () => {
    /** The checkpoint with the control activities' jobOpen answered by `jobOpen`. */
    const runAsking = (
      calls: string[],
      jobOpen: () => Promise<{ open: boolean; state: string | null }>,
      r: CheckpointRequest,
    ): Promise<CheckpointStatus> =>
      h.with(
        {
          ...createControlActivities(env.client),
          jobOpen: async () => {
            calls.push('jobOpen');
            return jobOpen();
          },
        },
        { [r.node]: node(calls, true) },
        async () =>
          settled(
            await env.client.workflow.start('checkpoint', {
              workflowId: checkpointWorkflowId(r.checkpointId),
              taskQueue: CONTROL_QUEUE,
              args: [r],
            }),
          ),
      );

    test('a job whose workflow is open: refused (JobOpen) before anything is touched', async () => {
      const calls: string[] = [];
      const err = await runAsking(calls, async () => ({ open: true, state: 'Running' }), req()).catch(
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(WorkflowFailedError);
      const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
      expect(cause.type).toBe('JobOpen');
      expect(cause.message).toMatch(
        /^Pending: job job-1 is run by its job workflow \(state Running\): stopped from outside, it would start its run again; leave it running \(--leave-running\), or preempt, migrate or cancel the job$/,
      );
      expect(calls).toEqual(['jobOpen']);
    });

    test('whether it is cannot be told: fails, nothing touched', async () => {
      const calls: string[] = [];
      const err = await runAsking(
        calls,
        async () => {
          throw ApplicationFailure.nonRetryable('Temporal unreachable', 'Unavailable');
        },
        req(),
      ).catch((e: unknown) => e);
      expect(((err as WorkflowFailedError).cause as ApplicationFailure).message).toMatch(
        /^Pending: could not tell whether job job-1 is run by a job workflow, so nothing was touched: .*Temporal unreachable/,
      );
      expect(calls).toEqual(['jobOpen']);
    });

    test('no job workflow: asked once, then checkpointed as before; left running: not asked', async () => {
      const calls: string[] = [];
      const s = await runAsking(calls, async () => ({ open: false, state: null }), req());
      expect(s.phase).toBe('Durable');
      expect(calls).toEqual(['jobOpen', 'resolveTarget', 'cudaLock', 'cudaCheckpoint', 'criuDump', 'seal', 'upload']);
      const left: string[] = [];
      const l = await runAsking(left, async () => ({ open: true, state: 'Running' }), req({ leaveRunning: true }));
      expect(l.phase).toBe('Durable');
      expect(left).not.toContain('jobOpen');
      // A preemption is the job's own stopping checkpoint: never refused for its job being open.
      const pre: string[] = [];
      const p = await runAsking(pre, async () => ({ open: true, state: 'Running' }), req({ reason: 'preemption' }));
      expect(p.phase).toBe('Durable');
      expect(pre).not.toContain('jobOpen');
    });
  });

  describe('b) clean dump failure: the workload is resumed, nothing is lost', () => {
    test.each([
      ['CriuDumpFailed', 'criu dump failed: Error (criu/cr-dump.c): unsupported fd'],
      ['NoSpace', 'criu dump failed: No space left on device'],
    ])('%s on a CUDA process: CUDA restored and unlocked, partial deleted, no kill', async (type, message) => {
      const calls: string[] = [];
      const mock = node(calls, true, {
        criuDump: async () => {
          calls.push('criuDump');
          throw ApplicationFailure.nonRetryable(message, type);
        },
      });
      const s = await run(mock, req());
      expect(s.phase).toBe('Failed');
      expect(s.failureReason).toContain(type);
      expect(calls).toEqual([
        'resolveTarget',
        'cudaLock',
        'cudaCheckpoint',
        'criuDump',
        'cudaRestore',
        'cudaUnlock',
        'deleteCheckpointDir',
      ]);
      expect(calls).not.toContain('killProcess');
    });

    test('CUDA checkpoint fails: unlocked again, CRIU never runs', async () => {
      const calls: string[] = [];
      const mock = node(calls, true, {
        cudaCheckpoint: async () => {
          calls.push('cudaCheckpoint');
          throw ApplicationFailure.nonRetryable(
            'cuCheckpointProcessCheckpoint(pid 4242) failed: CUresult 2',
            'CudaOutOfMemory',
          );
        },
      });
      const s = await run(mock, req());
      expect(s.phase).toBe('Failed');
      expect(calls).toEqual(['resolveTarget', 'cudaLock', 'cudaCheckpoint', 'cudaUnlock', 'deleteCheckpointDir']);
    });

    test('sealing fails after a stopping dump: the process is restored in place from its images', async () => {
      const calls: string[] = [];
      const mock = node(calls, false, {
        seal: async () => {
          calls.push('seal');
          throw ApplicationFailure.nonRetryable('ENOSPC writing metadata.json', 'NoSpace');
        },
      });
      const s = await run(mock, req());
      expect(s.phase).toBe('Failed');
      expect(calls).toEqual(['resolveTarget', 'cudaLock', 'criuDump', 'seal', 'criuRestore', 'deleteCheckpointDir']);
      expect(s.history.some((h) => h.outcome === 'compensated' && h.detail.includes('restored in place'))).toBe(true);
    });
  });

  describe('a) a step times out: the node is asked what happened, and the workflow goes on from there', () => {
    test('heartbeat timeout in Sealing, the node reports the dump done and the seal cut off: sealed again, Durable, the workload never killed', async () => {
      const calls: string[] = [];
      let seals = 0;
      const asked: unknown[] = [];
      const s = await run(
        node(calls, false, {
          seal: async () => {
            calls.push('seal');
            if (++seals === 1) await Context.current().sleep(600000); // the agent dies here: no heartbeat, no reply
            return { files: 3, totalBytes: 1000, metadataSha256: 'x' };
          },
          inspectCheckpoint: async (i) => {
            calls.push('inspectCheckpoint');
            asked.push(i.process);
            return inspection(
              { criuDump: { state: 'done', data: { ...dumped } }, seal: { state: 'interrupted' } },
              { state: 'gone', sameIdentity: false },
              true,
            );
          },
        }),
        req(),
      );
      expect(s.phase).toBe('Durable');
      expect(s.tier).toBe('s3');
      expect(calls).toEqual(['resolveTarget', 'cudaLock', 'criuDump', 'seal', 'inspectCheckpoint', 'seal', 'upload']);
      expect(asked).toEqual([{ pid: 4242, startTime: 777 }]);
      expect(s.history.map((x) => `${x.phase}:${x.outcome}`)).toEqual([
        'Locking:ok',
        'DumpingVram:skipped',
        'DumpingProcess:ok',
        'Sealing:failed',
        'Sealing:skipped',
        'Sealing:ok',
        'Uploading:ok',
      ]);
      expect(s.history[3].detail).toMatch(/seal: HEARTBEAT timeout: asking node-a/);
      expect(s.history[4].detail).toBe('seal was cut off on node-a: running it again');
    });

    test('timeout in Sealing, the seal finished on the node meanwhile: its result is used, nothing runs twice', async () => {
      const calls: string[] = [];
      const s = await run(
        node(calls, false, {
          seal: hang(calls, 'seal'),
          inspectCheckpoint: async () => {
            calls.push('inspectCheckpoint');
            return inspection(
              {
                criuDump: { state: 'done', data: { ...dumped } },
                seal: { state: 'done', data: { files: 9, totalBytes: 4096, metadataSha256: 'y' } },
              },
              { state: 'gone' },
              true,
            );
          },
        }),
        req(),
      );
      expect(s.phase).toBe('Durable');
      expect(calls).toEqual(['resolveTarget', 'cudaLock', 'criuDump', 'seal', 'inspectCheckpoint', 'upload']);
      expect(s.history.find((x) => x.phase === 'Sealing' && x.outcome === 'ok')?.detail).toBe(
        '9 files, 4096 bytes (finished on the node while out of sight)',
      );
    });

    test('heartbeat timeout in DumpingProcess while the dump still runs on the node: waited for, then its result used', async () => {
      const calls: string[] = [];
      let asks = 0;
      const s = await run(
        node(calls, false, {
          criuDump: hang(calls, 'criuDump'),
          inspectCheckpoint: async () => {
            calls.push('inspectCheckpoint');
            return ++asks < 3
              ? inspection({ criuDump: { state: 'running' } }, { state: 'stopped', procState: 't', tracerPid: 999 })
              : inspection(
                  { criuDump: { state: 'done', data: { ...dumped } } },
                  { state: 'gone', sameIdentity: false },
                  true,
                );
          },
        }),
        req(),
      );
      expect(s.phase).toBe('Durable');
      expect(calls).toEqual([
        'resolveTarget',
        'cudaLock',
        'criuDump',
        'inspectCheckpoint',
        'inspectCheckpoint',
        'inspectCheckpoint',
        'seal',
        'upload',
      ]);
      expect(s.history.find((x) => x.phase === 'DumpingProcess' && x.outcome === 'ok')?.detail).toBe(
        '1000 bytes in 5 ms (finished on the node while out of sight)',
      );
      expect(calls).not.toContain('killProcess');
    });

    test('a dump cut off, the process frozen by a CRIU that is gone, no complete image: the only kill, by identity; partial deleted; preempted job requeued', async () => {
      const calls: string[] = [];
      const kills: unknown[] = [];
      const s = await run(
        node(calls, true, {
          criuDump: hang(calls, 'criuDump'),
          inspectCheckpoint: async () => {
            calls.push('inspectCheckpoint');
            return inspection(
              { cudaLock: { state: 'done' }, cudaCheckpoint: { state: 'done' }, criuDump: { state: 'interrupted' } },
              { state: 'stopped', procState: 'T', tracerPid: null },
            );
          },
          killProcess: async (i) => {
            calls.push('killProcess');
            kills.push(i);
            return { killed: true };
          },
        }),
        req({ reason: 'preemption' }),
      );
      expect(s.phase).toBe('Failed');
      expect(s.failureReason).toMatch(/^DumpingProcess: criuDump: HEARTBEAT timeout/);
      expect(calls.slice(-3)).toEqual(['inspectCheckpoint', 'killProcess', 'deleteCheckpointDir']);
      expect(kills).toEqual([expect.objectContaining({ pid: 4242, startTime: 777 })]);
      expect(calls).not.toContain('cudaRestore');
      expect(s.history.map((x) => x.detail)).toEqual(
        expect.arrayContaining(['workload pid 4242 killed', 'partial checkpoint directory deleted']),
      );
      // No job workflow exists in this test: the requeue attempt is recorded with its outcome.
      expect(s.history.some((x) => x.detail.includes('requeue'))).toBe(true);
    });

    test('a dump cut off after CRIU wrote its images and stopped the process, with no recorded file list to finish it: nothing to kill, the images kept as all that is left; requeued', async () => {
      const calls: string[] = [];
      const s = await run(
        node(calls, false, {
          criuDump: hang(calls, 'criuDump'),
          inspectCheckpoint: async () => {
            calls.push('inspectCheckpoint');
            const seen = inspection({ criuDump: { state: 'interrupted' } }, { state: 'gone', sameIdentity: false });
            return { ...seen, images: { location: 'disk', inventory: true, complete: false } };
          },
        }),
        req({ reason: 'preemption' }),
      );
      expect(s.phase).toBe('Failed');
      expect(calls).toEqual(['resolveTarget', 'cudaLock', 'criuDump', 'inspectCheckpoint']);
      expect(s.history.map((x) => x.detail)).toEqual(
        expect.arrayContaining([
          'workload pid 4242 is gone and no complete dump holds it',
          "partial checkpoint kept (disk): CRIU's images are all that is left of the workload",
        ]),
      );
      expect(s.history.some((x) => x.detail.includes('requeue'))).toBe(true);
    });

    test('a dump cut off after CRIU finished its images and stopped the process: the returning agent finishes the dump, sealed, Durable', async () => {
      const calls: string[] = [];
      const s = await run(
        node(calls, false, {
          criuDump: hang(calls, 'criuDump'),
          inspectCheckpoint: async () => {
            calls.push('inspectCheckpoint');
            const seen = inspection(
              {
                criuDump: { state: 'interrupted', data: { pid: 4242, leaveRunning: false, files: ['/w/output.log'] } },
              },
              { state: 'gone', sameIdentity: false },
            );
            return { ...seen, images: { location: 'memory', inventory: true, complete: false } };
          },
          finishDump: async (i) => {
            calls.push(`finishDump ${i.process.pid}/${i.process.startTime}`);
            return { imageBytes: 2000, durationMs: 0, processStopped: true, staged: true };
          },
        }),
        req(),
      );
      expect(s.phase).toBe('Durable');
      expect(calls.slice(0, 6)).toEqual([
        'resolveTarget',
        'cudaLock',
        'criuDump',
        'inspectCheckpoint',
        'finishDump 4242/777',
        'seal',
      ]);
      expect(calls.slice(6, 8).sort()).toEqual(['persist', 'upload']); // side by side: staged in memory
      expect(calls.slice(8)).toEqual(['releaseStaging']);
      expect(s.history.find((x) => x.phase === 'DumpingProcess' && x.outcome === 'ok')?.detail).toBe(
        '2000 bytes in 0 ms (staged in memory) (CRIU finished the images while the agent was lost; output files copied now)',
      );
    });

    test('a dump cut off while the orphaned CRIU still traces the process: waited for, not judged; once it lets go, the clean compensation', async () => {
      const calls: string[] = [];
      let asks = 0;
      const s = await run(
        node(calls, false, {
          criuDump: hang(calls, 'criuDump'),
          inspectCheckpoint: async () => {
            calls.push('inspectCheckpoint');
            return ++asks < 3
              ? inspection({ criuDump: { state: 'interrupted' } }, { state: 'stopped', procState: 't', tracerPid: 999 })
              : inspection(
                  { criuDump: { state: 'interrupted' } },
                  { state: 'running', procState: 'S', tracerPid: null },
                );
          },
        }),
        req({ leaveRunning: true }),
      );
      expect(s.phase).toBe('Failed');
      expect(calls).toEqual([
        'resolveTarget',
        'cudaLock',
        'criuDump',
        'inspectCheckpoint',
        'inspectCheckpoint',
        'inspectCheckpoint',
        'deleteCheckpointDir',
      ]);
    });

    test('a dump cut off but the process runs again (CRIU let go of it): the usual clean compensation, no kill', async () => {
      const calls: string[] = [];
      const s = await run(
        node(calls, true, {
          criuDump: hang(calls, 'criuDump'),
          inspectCheckpoint: async () => {
            calls.push('inspectCheckpoint');
            return inspection(
              { criuDump: { state: 'interrupted' } },
              { state: 'running', procState: 'S', cuda: 'checkpointed' },
            );
          },
        }),
        req(),
      );
      expect(s.phase).toBe('Failed');
      expect(calls).toEqual([
        'resolveTarget',
        'cudaLock',
        'cudaCheckpoint',
        'criuDump',
        'inspectCheckpoint',
        'cudaRestore',
        'cudaUnlock',
        'deleteCheckpointDir',
      ]);
    });

    test('CUDA checkpoint cut off: undone as if it had happened (the undo steps check the driver state)', async () => {
      const calls: string[] = [];
      const s = await run(
        node(calls, true, {
          cudaCheckpoint: hang(calls, 'cudaCheckpoint'),
          inspectCheckpoint: async () => {
            calls.push('inspectCheckpoint');
            return inspection(
              { cudaLock: { state: 'done' }, cudaCheckpoint: { state: 'interrupted' } },
              { state: 'running', cuda: 'locked' },
            );
          },
        }),
        req(),
      );
      expect(s.phase).toBe('Failed');
      expect(calls).toEqual([
        'resolveTarget',
        'cudaLock',
        'cudaCheckpoint',
        'inspectCheckpoint',
        'cudaRestore',
        'cudaUnlock',
        'deleteCheckpointDir',
      ]);
    });

    test('the agent away longer than any step timeout: the workflow waits for it, nothing is killed; back, it goes on to Durable', async () => {
      const calls: string[] = [];
      const r = req();
      const nodeWorker = (acts: Mock): Promise<Worker> => h.nodeWorker(r.node, acts);
      const s = await h.with(createControlActivities(env.client), {}, async () => {
        const wf = await env.client.workflow.start('checkpoint', {
          workflowId: checkpointWorkflowId(r.checkpointId),
          taskQueue: CONTROL_QUEUE,
          args: [r],
        });
        const asking = async (): Promise<boolean> =>
          (await wf.query<CheckpointStatus>('status')).history.some((x) => x.detail.includes('asking'));
        // The agent dies in the dump and stays away: nobody polls node/node-a.
        await (
          await nodeWorker(node(calls, false, { criuDump: hang(calls, 'criuDump') }))
        ).runUntil(async () => {
          for (let i = 0; i < 300 && !(await asking()); i++) await env.sleep('2s');
        });
        expect(await asking()).toBe(true);
        // Longer than a step's schedule-to-start (1 min). The test server does not skip time while a task
        // waits for a poller, so this is real time.
        await env.sleep('75s');
        const st = await wf.query<CheckpointStatus>('status');
        expect(st.phase).toBe('DumpingProcess');
        expect(calls).toEqual(['resolveTarget', 'cudaLock', 'criuDump']);
        // Back: the dump had finished, the workload is stopped and its images complete.
        const back = node(calls, false, {
          inspectCheckpoint: async () => {
            calls.push('inspectCheckpoint');
            return inspection({ criuDump: { state: 'done', data: { ...dumped } } }, { state: 'gone' }, true);
          },
        });
        return (await nodeWorker(back)).runUntil(settled(wf));
      });
      expect(s.phase).toBe('Durable');
      expect(calls).toEqual(['resolveTarget', 'cudaLock', 'criuDump', 'inspectCheckpoint', 'seal', 'upload']);
    }, 240000);

    test('no agent polls the node: fails as unreachable without touching the workload', async () => {
      const calls: string[] = [];
      const r = req({ node: 'node-nobody' });
      const err = await h
        .with(createControlActivities(env.client), {}, () =>
          env.client.workflow.execute('checkpoint', {
            workflowId: checkpointWorkflowId(r.checkpointId),
            taskQueue: CONTROL_QUEUE,
            args: [r],
          }),
        )
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(WorkflowFailedError);
      expect(String((err as WorkflowFailedError).cause?.message)).toContain('SCHEDULE_TO_START');
      expect(calls).toEqual([]);
    });
  });

  describe('compensations: each runs even if one before it failed, on the process as it is now', () => {
    test('CUDA restore fails: the unlock and the cleanup still run, the failure recorded', async () => {
      const calls: string[] = [];
      const s = await run(
        node(calls, true, {
          criuDump: async () => {
            calls.push('criuDump');
            throw ApplicationFailure.nonRetryable(
              'criu dump failed: Error (criu/cr-dump.c): unsupported fd',
              'CriuDumpFailed',
            );
          },
          cudaRestore: async () => {
            calls.push('cudaRestore');
            throw ApplicationFailure.nonRetryable(
              'cuCheckpointProcessRestore(pid 4242) failed: CUresult 999',
              'CudaError',
            );
          },
        }),
        req(),
      );
      expect(s.phase).toBe('Failed');
      expect(calls).toEqual([
        'resolveTarget',
        'cudaLock',
        'cudaCheckpoint',
        'criuDump',
        'cudaRestore',
        'cudaUnlock',
        'deleteCheckpointDir',
      ]);
      expect(s.history.map((x) => `${x.outcome}: ${x.detail}`)).toEqual(
        expect.arrayContaining([
          expect.stringMatching(/^failed: CUDA restore failed: cudaRestore: CudaError/),
          'compensated: CUDA unlock of pid 4242: unlocked',
          'compensated: partial checkpoint directory deleted',
        ]),
      );
    });

    test('after a restore in place, CUDA restore and unlock go to the new pid, and the history says what they did', async () => {
      const calls: string[] = [];
      const pids: number[] = [];
      const s = await run(
        node(calls, true, {
          seal: async () => {
            calls.push('seal');
            throw ApplicationFailure.nonRetryable('ENOSPC writing metadata.json', 'NoSpace');
          },
          criuRestore: async (i) => {
            calls.push(`criuRestore${i.inPlace ? ' in place' : ''}`);
            return { pid: 5151, startTime: 9 };
          },
          cudaRestore: async (i) => {
            calls.push('cudaRestore');
            pids.push(i.pid);
            return { outcome: 'done' as const, detail: 'restore ok; state now locked' };
          },
          cudaUnlock: async (i) => {
            calls.push('cudaUnlock');
            pids.push(i.pid);
            return { outcome: 'skipped' as const, detail: `pid ${i.pid} holds no CUDA context` };
          },
        }),
        req(),
      );
      expect(s.phase).toBe('Failed');
      expect(calls).toEqual([
        'resolveTarget',
        'cudaLock',
        'cudaCheckpoint',
        'criuDump',
        'seal',
        'criuRestore in place',
        'cudaRestore',
        'cudaUnlock',
        'deleteCheckpointDir',
      ]);
      expect(pids).toEqual([5151, 5151]);
      expect(s.history.filter((x) => x.phase === 'Sealing').map((x) => `${x.outcome}: ${x.detail}`)).toEqual([
        expect.stringMatching(/^failed: Sealing: seal: NoSpace/),
        'compensated: restored in place as pid 5151',
        'compensated: CUDA restore of pid 5151: restore ok; state now locked',
        'skipped: CUDA unlock of pid 5151: pid 5151 holds no CUDA context',
        'compensated: partial checkpoint directory deleted',
      ]);
    });

    test("the restore in place fails: CUDA undo still runs, and the dump (the workload's only copy) is kept, not deleted", async () => {
      const calls: string[] = [];
      const s = await run(
        node(calls, true, {
          seal: async () => {
            calls.push('seal');
            throw ApplicationFailure.nonRetryable('ENOSPC writing metadata.json', 'NoSpace');
          },
          criuRestore: async () => {
            calls.push('criuRestore');
            throw ApplicationFailure.nonRetryable(
              'criu restore failed: Error (criu/cr-restore.c): x',
              'CriuRestoreFailed',
            );
          },
        }),
        req(),
      );
      expect(s.phase).toBe('Failed');
      expect(calls).toEqual([
        'resolveTarget',
        'cudaLock',
        'cudaCheckpoint',
        'criuDump',
        'seal',
        'criuRestore',
        'cudaRestore',
        'cudaUnlock',
      ]);
      expect(s.history.at(-1)?.detail).toBe(
        'checkpoint directory kept: the workload is stopped and its dump is its only copy',
      );
    });
  });

  describe('dump staged in memory: upload and copy to disk at the same time', () => {
    test('both run at once; Durable as soon as S3 has it, while the (unsynced) copy to disk still runs; memory freed after it', async () => {
      const calls: string[] = [];
      const r = req();
      const seen: string[] = [];
      const s = await run(
        stagingNode(calls, {
          upload: slow(calls, 'upload', 1000, uploaded),
          persist: slow(calls, 'persist', 4000, { bytes: 1000, durationMs: 4000 }),
        }),
        r,
        async () => {
          const wf = env.client.workflow.getHandle(checkpointWorkflowId(r.checkpointId));
          for (let i = 0; i < 100 && !calls.includes('releaseStaging'); i++) {
            const st = await wf.query<CheckpointStatus>('status');
            const now = `${st.phase}/${st.tier}${calls.includes('persist:end') ? '' : ' (copying)'}`;
            if (seen.at(-1) !== now) seen.push(now);
            await new Promise((res) => setTimeout(res, 100));
          }
        },
      );
      expect(s.phase).toBe('Durable');
      expect(s.tier).toBe('s3');
      expect(seen).toEqual(expect.arrayContaining(['Uploading/memory (copying)', 'Durable/s3 (copying)']));
      const after = calls.slice(calls.indexOf('seal') + 1);
      expect(after.slice(0, 2).sort()).toEqual(['persist:start', 'upload:start']);
      expect(after.slice(2)).toEqual(['upload:end', 'persist:end', 'releaseStaging']);
      expect(s.history.map((h) => `${h.phase}:${h.outcome}`)).toEqual([
        'Locking:ok',
        'DumpingVram:skipped',
        'DumpingProcess:ok',
        'Sealing:ok',
        'Uploading:ok',
        'Uploading:ok',
      ]);
      expect(s.history[2].detail).toContain('staged in memory');
      expect(s.history[5].detail).toMatch(/^copied to disk/);
    });

    test("left running: the copy to disk waits for the upload (the workload's own memory still holds it); Durable first, memory freed after the copy", async () => {
      const calls: string[] = [];
      const r = req({ leaveRunning: true });
      const seen: string[] = [];
      const s = await run(
        stagingNode(calls, {
          upload: slow(calls, 'upload', 1000, uploaded),
          persist: slow(calls, 'persist', 4000, { bytes: 1000, durationMs: 4000 }),
        }),
        r,
        async () => {
          const wf = env.client.workflow.getHandle(checkpointWorkflowId(r.checkpointId));
          for (let i = 0; i < 100 && !calls.includes('releaseStaging'); i++) {
            const st = await wf.query<CheckpointStatus>('status');
            const now = `${st.phase}/${st.tier}${calls.includes('persist:start') && !calls.includes('persist:end') ? ' (copying)' : ''}`;
            if (seen.at(-1) !== now) seen.push(now);
            await new Promise((res) => setTimeout(res, 100));
          }
        },
      );
      expect(s.phase).toBe('Durable');
      expect(s.tier).toBe('s3');
      expect(seen).toEqual(expect.arrayContaining(['Uploading/memory', 'Durable/s3 (copying)']));
      expect(seen).not.toContain('Uploading/memory (copying)');
      expect(calls.slice(calls.indexOf('seal') + 1)).toEqual([
        'upload:start',
        'upload:end',
        'persist:start',
        'persist:end',
        'releaseStaging',
      ]);
      expect(s.history.find((h) => h.phase === 'Uploading' && h.outcome === 'ok')?.detail).toMatch(/parts sent/);
      expect(s.history.at(-1)?.detail).toMatch(/^copied to disk/);
    });

    test('left running, the upload finds the staged copy changed since its seal: Failed as corrupt, no copy of those bytes made', async () => {
      const calls: string[] = [];
      const s = await run(
        stagingNode(calls, {
          upload: async () => {
            calls.push('upload');
            throw ApplicationFailure.nonRetryable('images/pages-1.img: sha256 a != b', 'ChecksumMismatch');
          },
        }),
        req({ leaveRunning: true }),
      );
      expect(s.phase).toBe('Failed');
      expect(s.failureReason).toMatch(/sha256 a != b/);
      expect(calls.filter((c) => c.startsWith('persist'))).toEqual([]);
    });

    test.each([
      ['the copy beside the upload', false],
      ['left running: the copy once the upload gave up', true],
    ])(
      'S3 down (%s), copy to disk done: the copy is synced, PendingUpload on nvme, memory freed, promoted later',
      async (_what, leaveRunning) => {
        const calls: string[] = [];
        const r = req({ uploadMaxAttempts: 2, leaveRunning });
        const s3 = s3DownUntilPending(calls, r, () => {
          // Hashing streamed: the copy is sealed in full (every file hashed) before it is synced as tier nvme.
          expect(calls.filter((c) => c !== 'upload').slice(-4)).toEqual([
            'persist',
            'seal',
            'persist sync',
            'releaseStaging',
          ]);
          // Left running, the copy waited for both upload attempts.
          if (leaveRunning)
            expect(calls.slice(calls.indexOf('seal') + 1, calls.indexOf('persist'))).toEqual(['upload', 'upload']);
        });
        const s = await run(stagingNode(calls, { upload: s3.upload }), r, s3.during);
        expect(s.phase).toBe('Durable');
        expect(calls.indexOf('releaseStaging')).toBeLessThan(calls.lastIndexOf('upload'));
      },
    );

    test('disk full for the copy, S3 fine: Durable on s3 without a local copy, the failure recorded', async () => {
      const calls: string[] = [];
      const s = await run(
        stagingNode(calls, {
          persist: async () => {
            calls.push('persist');
            throw ApplicationFailure.nonRetryable('ENOSPC: no space left on device', 'NoSpace');
          },
        }),
        req(),
      );
      expect(s.phase).toBe('Durable');
      expect(s.tier).toBe('s3');
      expect(calls.filter((c) => c.startsWith('persist'))).toEqual(['persist']); // a full disk is not retried
      expect(
        s.history.some(
          (h) => h.outcome === 'failed' && h.detail.startsWith('copy to disk:') && h.detail.includes('NoSpace'),
        ),
      ).toBe(true);
      expect(calls).toContain('releaseStaging');
    });

    test('neither S3 nor the disk takes it: the workload is restored in place from memory, then the memory freed; Failed', async () => {
      const calls: string[] = [];
      const s = await run(
        stagingNode(calls, {
          upload: async () => {
            calls.push('upload');
            throw ApplicationFailure.retryable('connect ECONNREFUSED', 'S3Unavailable');
          },
          persist: async () => {
            calls.push('persist');
            throw ApplicationFailure.nonRetryable('ENOSPC', 'NoSpace');
          },
        }),
        req({ uploadMaxAttempts: 2 }),
      );
      expect(s.phase).toBe('Failed');
      expect(s.failureReason).toMatch(/not durable anywhere/);
      expect(calls.slice(-2)).toEqual(['criuRestore', 'deleteCheckpointDir']);
      expect(s.history.some((h) => h.outcome === 'compensated' && h.detail === 'restored in place as pid 4242')).toBe(
        true,
      );
    });
  });

  describe("hashing while streaming (PATCH 'checkpoint-hash-while-streaming'): the upload commits metadata.json", () => {
    type SealIn = { hash?: string; keepCommitted?: boolean };
    const sealing = (calls: string[], seals: SealIn[], fail?: () => never) => async (i: SealIn) => {
      calls.push('seal');
      seals.push({ hash: i.hash, keepCommitted: i.keepCommitted });
      if (fail && seals.length > 1) fail();
      return i.hash === 'small'
        ? { files: 3, totalBytes: 1000, metadataSha256: null, streamed: 1 }
        : { files: 3, totalBytes: 1000, metadataSha256: 'full-seal' };
    };

    test('Sealing hashes the small files only; the upload result names metadata.json; Durable{s3}', async () => {
      const calls: string[] = [];
      const seals: SealIn[] = [];
      const s = await run(
        node(calls, false, {
          seal: sealing(calls, seals),
          upload: rec(calls, 'upload', { ...uploaded, metadataSha256: 'from-upload' }),
        }),
        req(),
      );
      expect(s.phase).toBe('Durable');
      expect(s.tier).toBe('s3');
      expect(calls).toEqual(['resolveTarget', 'cudaLock', 'criuDump', 'seal', 'upload']);
      expect(seals).toEqual([{ hash: 'small', keepCommitted: undefined }]);
      expect(s.metadataSha256).toBe('from-upload');
      expect(s.history.find((h) => h.phase === 'Sealing')?.detail).toContain('1 hashed by the upload');
    });

    test('staged: a copy that ended before the upload committed is finished by a second persist, then memory freed', async () => {
      const calls: string[] = [];
      let copies = 0;
      const s = await run(
        stagingNode(calls, {
          seal: sealing(calls, []),
          upload: slow(calls, 'upload', 2000, { ...uploaded, metadataSha256: 'from-upload' }),
          persist: async () => {
            calls.push('persist');
            copies++;
            return copies === 1 ? { bytes: 1000, durationMs: 7, sealed: false } : { bytes: 1000, durationMs: 1 };
          },
        }),
        req(),
      );
      expect(s.phase).toBe('Durable');
      expect(calls.slice(calls.indexOf('upload:end'))).toEqual(['upload:end', 'persist', 'releaseStaging']);
      expect(copies).toBe(2);
      expect(s.history.some((h) => h.detail === 'disk copy committed in 1 ms')).toBe(true);
    });

    test('S3 unreachable, dump on disk: a full seal (every file, a committed metadata.json kept) before PendingUpload; its sha256 goes to the promotion', async () => {
      const calls: string[] = [];
      const seals: SealIn[] = [];
      const r = req({ uploadMaxAttempts: 2 });
      const s3 = s3DownUntilPending(calls, r, (st) => expect(st.metadataSha256).toBe('full-seal'));
      const s = await run(node(calls, false, { seal: sealing(calls, seals), upload: s3.upload }), r, s3.during);
      expect(s.phase).toBe('Durable');
      expect(seals).toEqual([
        { hash: 'small', keepCommitted: undefined },
        { hash: 'all', keepCommitted: true },
      ]);
      expect(calls.slice(0, 6)).toEqual(['resolveTarget', 'cudaLock', 'criuDump', 'seal', 'upload', 'upload']);
      expect(calls[6]).toBe('seal');
    });

    test('S3 unreachable and the full seal finds the local copy changed: no tier nvme, Failed as corrupt', async () => {
      const calls: string[] = [];
      const s = await run(
        stagingNode(calls, {
          seal: sealing(calls, [], () => {
            throw ApplicationFailure.nonRetryable('images/pages-1.img: sha256 a != b', 'ChecksumMismatch');
          }),
          setAsideCorrupt: rec(calls, 'setAsideCorrupt', { movedTo: '/data/corrupt/x' }),
          upload: async () => {
            calls.push('upload');
            throw ApplicationFailure.retryable('connect ECONNREFUSED', 'S3Unavailable');
          },
        }),
        req({ uploadMaxAttempts: 2 }),
      );
      expect(s.phase).toBe('Failed');
      expect(calls).not.toContain('persist sync');
      expect(s.failureReason).toMatch(/no longer matches its seal/);
    });
  });

  test('d) an upload interrupted by an agent crash resumes from its heartbeat details', async () => {
    const calls: string[] = [];
    const seen: unknown[] = [];
    let attempt = 0;
    const mock = node(calls, false, {
      upload: async () => {
        attempt++;
        calls.push('upload');
        seen.push(Context.current().info.heartbeatDetails);
        if (attempt === 1) {
          Context.current().heartbeat({ done: ['pages-1.img'], multipart: {} });
          await Context.current().sleep(600000); // the agent dies here
        }
        return { ...uploaded, partsResumed: 1 };
      },
    });
    const s = await run(mock, req());
    expect(s.phase).toBe('Durable');
    expect(attempt).toBe(2);
    expect(seen[0]).toBeUndefined();
    expect(seen[1]).toEqual({ done: ['pages-1.img'], multipart: {} });
    expect(s.upload?.partsResumed).toBe(1);
  });

  test('c) S3 unreachable: retries with backoff, then PendingUpload on nvme; the promotion loop uploads it once S3 answers', async () => {
    const calls: string[] = [];
    let s3Up = false;
    const mock = node(calls, false, {
      upload: async () => {
        calls.push(`upload by ${Context.current().info.workflowExecution?.workflowId}`);
        if (!s3Up) throw ApplicationFailure.retryable('connect ECONNREFUSED 127.0.0.1:9000', 'S3Unavailable');
        return uploaded;
      },
    });
    const r = req({ uploadMaxAttempts: 3 });
    const s = await run(mock, r, async () => {
      const wf = env.client.workflow.getHandle(checkpointWorkflowId(r.checkpointId));
      for (let i = 0; i < 600; i++) {
        const st = await wf.query<CheckpointStatus>('status');
        if (st.phase === 'PendingUpload') {
          expect(st.tier).toBe('nvme');
          break;
        }
        await env.sleep('1s');
      }
      expect((await wf.query<CheckpointStatus>('status')).phase).toBe('PendingUpload');
      // S3 comes back: no operator action, the loop's next retry succeeds.
      s3Up = true;
    });
    expect(s.phase).toBe('Durable');
    expect(s.tier).toBe('s3');
    const uploads = calls.filter((c) => c.startsWith('upload'));
    // Three attempts by the checkpoint workflow, then the node's promotion loop until S3 answered.
    expect(uploads.slice(0, 3)).toEqual(Array(3).fill(`upload by ${checkpointWorkflowId(r.checkpointId)}`));
    expect(uploads.at(-1)).toBe(`upload by ${promotionWorkflowId('node-a')}`);
    expect(s.history.map((h) => `${h.phase}:${h.outcome}`)).toContain('Uploading:failed');
  });
});
