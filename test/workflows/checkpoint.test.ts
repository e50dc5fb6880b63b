import { ApplicationFailure, Context } from '@temporalio/activity';
import { WorkflowFailedError } from '@temporalio/client';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { createControlActivities } from '../../activities/control';
import type { CheckpointRequest, CheckpointStatus, UploadResult } from '../../common/checkpoint';
import { checkpointWorkflowId, CONTROL_QUEUE, promotionWorkflowId } from '../../common/queues';
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

const uploaded: UploadResult = { bucket: 'b', prefix: 'checkpoints/c/', bytesSent: 100, partsSent: 3, partsResumed: 0 };

/** A node whose every step succeeds; tests override the steps they break, and read `calls` for the order. */
function node(calls: string[], cuda: boolean, overrides: Mock = {}): Mock {
  const rec = <T>(name: string, value: T) => async (): Promise<T> => {
    calls.push(name);
    return value;
  };
  const base: Mock = {
    resolveTarget: async (i) => {
      calls.push('resolveTarget');
      return { pid: i.pid ?? 4242 };
    },
    cudaLock: rec('cudaLock', cuda ? { outcome: 'done' as const, detail: 'locked' } : { outcome: 'skipped' as const, detail: 'no CUDA context' }),
    cudaCheckpoint: rec('cudaCheckpoint', { outcome: 'done' as const, detail: 'checkpointed' }),
    cudaRestore: rec('cudaRestore', { outcome: 'done' as const, detail: 'restored' }),
    cudaUnlock: rec('cudaUnlock', { outcome: 'done' as const, detail: 'unlocked' }),
    criuDump: async (i) => {
      calls.push('criuDump');
      return { imageBytes: 1000, durationMs: 5, processStopped: !i.leaveRunning };
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

/** An activity that records its start and end, so a test can see two of them overlap. */
const slow = <T>(calls: string[], name: string, ms: number, value: T) => async (): Promise<T> => {
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

const req = (over: Partial<CheckpointRequest> = {}): CheckpointRequest => ({
  checkpointId: `ck-${Math.random().toString(36).slice(2, 8)}`, jobId: 'job-1', node: 'node-a', pid: 4242, leaveRunning: false, reason: 'manual', ...over,
});

async function run(mock: Mock, request: CheckpointRequest, during?: () => Promise<void>): Promise<CheckpointStatus> {
  return h.with(createControlActivities(env.client), { [request.node]: mock }, async () => {
    const wf = await env.client.workflow.start('checkpoint', { workflowId: checkpointWorkflowId(request.checkpointId), taskQueue: CONTROL_QUEUE, args: [request] });
    if (during) await during();
    return (await wf.result()) as CheckpointStatus;
  });
}

describe('checkpoint workflow', () => {
  test('a process without CUDA: CUDA steps skipped, dumped, sealed, uploaded: Durable on s3', async () => {
    const calls: string[] = [];
    const s = await run(node(calls, false), req());
    expect(s.phase).toBe('Durable');
    expect(s.tier).toBe('s3');
    expect(calls).toEqual(['resolveTarget', 'cudaLock', 'criuDump', 'seal', 'upload']);
    expect(s.history.map((h) => `${h.phase}:${h.outcome}`)).toEqual(['Locking:ok', 'DumpingVram:skipped', 'DumpingProcess:ok', 'Sealing:ok', 'Uploading:ok']);
  });

  test('a CUDA process: lock, checkpoint, dump, seal, upload in that order', async () => {
    const calls: string[] = [];
    const s = await run(node(calls, true), req());
    expect(s.phase).toBe('Durable');
    expect(calls).toEqual(['resolveTarget', 'cudaLock', 'cudaCheckpoint', 'criuDump', 'seal', 'upload']);
  });

  test('--leave-running on a CUDA process: VRAM restored and unlocked after the dump', async () => {
    const calls: string[] = [];
    const s = await run(node(calls, true), req({ leaveRunning: true }));
    expect(s.phase).toBe('Durable');
    expect(calls).toEqual(['resolveTarget', 'cudaLock', 'cudaCheckpoint', 'criuDump', 'seal', 'cudaRestore', 'cudaUnlock', 'upload']);
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
      expect(calls).toEqual(['resolveTarget', 'cudaLock', 'cudaCheckpoint', 'criuDump', 'cudaRestore', 'cudaUnlock', 'deleteCheckpointDir']);
      expect(calls).not.toContain('killProcess');
    });

    test('CUDA checkpoint fails: unlocked again, CRIU never runs', async () => {
      const calls: string[] = [];
      const mock = node(calls, true, {
        cudaCheckpoint: async () => {
          calls.push('cudaCheckpoint');
          throw ApplicationFailure.nonRetryable('cuCheckpointProcessCheckpoint(pid 4242) failed: CUresult 2', 'CudaOutOfMemory');
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

  describe('a) agent lost mid-step: workload killed once the agent is back, attempt Failed, partial deleted', () => {
    test.each([
      ['DumpingVram', 'cudaCheckpoint'],
      ['DumpingProcess', 'criuDump'],
      ['Sealing', 'seal'],
    ] as const)('lost during %s', async (phase, activity) => {
      const calls: string[] = [];
      const s = await run(node(calls, true, { [activity]: hang(calls, activity) }), req());
      expect(s.phase).toBe('Failed');
      expect(s.failureReason).toContain(phase);
      expect(s.failureReason).toContain('HEARTBEAT');
      expect(calls.slice(-2)).toEqual(['killProcess', 'deleteCheckpointDir']);
      expect(calls).not.toContain('cudaRestore');
    });

    test('a preempted job is requeued after the kill', async () => {
      const calls: string[] = [];
      const s = await run(node(calls, false, { criuDump: hang(calls, 'criuDump') }), req({ reason: 'preemption' }));
      expect(s.phase).toBe('Failed');
      // No job workflow exists in this test: the requeue attempt is recorded with its outcome.
      expect(s.history.some((h) => h.detail.includes('requeue'))).toBe(true);
    });

    test('no agent polls the node: fails as unreachable without touching the workload', async () => {
      const calls: string[] = [];
      const r = req({ node: 'node-nobody' });
      const err = await h.with(createControlActivities(env.client), {}, () =>
        env.client.workflow.execute('checkpoint', { workflowId: checkpointWorkflowId(r.checkpointId), taskQueue: CONTROL_QUEUE, args: [r] })).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(WorkflowFailedError);
      expect(String((err as WorkflowFailedError).cause?.message)).toContain('SCHEDULE_TO_START');
      expect(calls).toEqual([]);
    });
  });

  describe('dump staged in memory: upload and copy to disk at the same time', () => {
    test('both run at once; Durable as soon as S3 has it, while the (unsynced) copy to disk still runs; memory freed after it', async () => {
      const calls: string[] = [];
      const r = req();
      const seen: string[] = [];
      const s = await run(stagingNode(calls, { upload: slow(calls, 'upload', 1000, uploaded), persist: slow(calls, 'persist', 4000, { bytes: 1000, durationMs: 4000 }) }), r, async () => {
        const wf = env.client.workflow.getHandle(checkpointWorkflowId(r.checkpointId));
        for (let i = 0; i < 100 && !calls.includes('releaseStaging'); i++) {
          const st = await wf.query<CheckpointStatus>('status');
          const now = `${st.phase}/${st.tier}${calls.includes('persist:end') ? '' : ' (copying)'}`;
          if (seen.at(-1) !== now) seen.push(now);
          await new Promise((res) => setTimeout(res, 100));
        }
      });
      expect(s.phase).toBe('Durable');
      expect(s.tier).toBe('s3');
      expect(seen).toEqual(expect.arrayContaining(['Uploading/memory (copying)', 'Durable/s3 (copying)']));
      const after = calls.slice(calls.indexOf('seal') + 1);
      expect(after.slice(0, 2).sort()).toEqual(['persist:start', 'upload:start']);
      expect(after.slice(2)).toEqual(['upload:end', 'persist:end', 'releaseStaging']);
      expect(s.history.map((h) => `${h.phase}:${h.outcome}`)).toEqual(['Locking:ok', 'DumpingVram:skipped', 'DumpingProcess:ok', 'Sealing:ok', 'Uploading:ok', 'Uploading:ok']);
      expect(s.history[2].detail).toContain('staged in memory');
      expect(s.history[5].detail).toMatch(/^copied to disk/);
    });

    test('S3 down, copy to disk done: the copy is synced, PendingUpload on nvme, memory freed, promoted later', async () => {
      const calls: string[] = [];
      let s3Up = false;
      const r = req({ uploadMaxAttempts: 2 });
      const s = await run(stagingNode(calls, {
        upload: async () => {
          calls.push('upload');
          if (!s3Up) throw ApplicationFailure.retryable('connect ECONNREFUSED', 'S3Unavailable');
          return uploaded;
        },
      }), r, async () => {
        const wf = env.client.workflow.getHandle(checkpointWorkflowId(r.checkpointId));
        for (let i = 0; i < 600 && (await wf.query<CheckpointStatus>('status')).phase !== 'PendingUpload'; i++) await env.sleep('1s');
        const st = await wf.query<CheckpointStatus>('status');
        expect(st.phase).toBe('PendingUpload');
        expect(st.tier).toBe('nvme');
        expect(calls.filter((c) => c !== 'upload').slice(-3)).toEqual(['persist', 'persist sync', 'releaseStaging']);
        s3Up = true;
      });
      expect(s.phase).toBe('Durable');
      expect(calls.indexOf('releaseStaging')).toBeLessThan(calls.lastIndexOf('upload'));
    });

    test('disk full for the copy, S3 fine: Durable on s3 without a local copy, the failure recorded', async () => {
      const calls: string[] = [];
      const s = await run(stagingNode(calls, {
        persist: async () => {
          calls.push('persist');
          throw ApplicationFailure.nonRetryable('ENOSPC: no space left on device', 'NoSpace');
        },
      }), req());
      expect(s.phase).toBe('Durable');
      expect(s.tier).toBe('s3');
      expect(calls.filter((c) => c.startsWith('persist'))).toEqual(['persist']); // a full disk is not retried
      expect(s.history.some((h) => h.outcome === 'failed' && h.detail.startsWith('copy to disk:') && h.detail.includes('NoSpace'))).toBe(true);
      expect(calls).toContain('releaseStaging');
    });

    test('neither S3 nor the disk takes it: the workload is restored in place from memory, then the memory freed; Failed', async () => {
      const calls: string[] = [];
      const s = await run(stagingNode(calls, {
        upload: async () => {
          calls.push('upload');
          throw ApplicationFailure.retryable('connect ECONNREFUSED', 'S3Unavailable');
        },
        persist: async () => {
          calls.push('persist');
          throw ApplicationFailure.nonRetryable('ENOSPC', 'NoSpace');
        },
      }), req({ uploadMaxAttempts: 2 }));
      expect(s.phase).toBe('Failed');
      expect(s.failureReason).toMatch(/not durable anywhere/);
      expect(calls.slice(-2)).toEqual(['criuRestore', 'deleteCheckpointDir']);
      expect(s.history.some((h) => h.outcome === 'compensated' && h.detail === 'restored in place as pid 4242')).toBe(true);
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
