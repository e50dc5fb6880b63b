import { ApplicationFailure } from '@temporalio/activity';
import { WorkflowFailedError } from '@temporalio/client';
import { ErrorType } from '../../common/errors';
import type { PreemptResult } from '../../common/job';
import { CONTROL_QUEUE } from '../../common/queues';
import type { RunningJob, SweepInput, SweepStatus } from '../../common/sweep';
import type { preemptionSweep } from '../../workflows/sweep';
import type { chunkGc, scheduledChunkGc } from '../../workflows/chunk-gc';
import type { ChunkGcResult } from '../../common/chunk-gc';
import { type ControlMock, Harness } from './harness';

let h: Harness;
beforeAll(async () => {
  h = await Harness.create();
  // The first workflow of a fresh time-skipping server can time out while the workers start (as in job-log.test.ts).
  await sweep('sweep/warmup', { schedule: null, max: 1 }, []).catch(() => undefined);
}, 120000);
afterAll(async () => h?.teardown());
afterEach(async () => h?.reset());

const job = (jobId: string, priority: number, createdAt: string, more: Partial<RunningJob> = {}): RunningJob => ({
  jobId,
  priority,
  tier: 'normal',
  createdAt,
  node: 'node-a',
  zone: 'zone-1',
  ...more,
});

const OLD = '2026-01-01T00:00:00.000Z';
const NEW = '2026-01-02T00:00:00.000Z';

/** Runs a sweep over `jobs` with preemptJob answered by `answer`; returns its result and the calls in order. */
async function sweep(
  id: string,
  input: SweepInput,
  jobs: RunningJob[],
  answer: (jobId: string, attempt: number) => Promise<PreemptResult> = async (jobId) => ({
    checkpointId: `${jobId}-preempt-1`,
    outcome: 'requeued',
    message: 'checkpointed and requeued',
  }),
  unanswered: string[] = [],
): Promise<{ result: SweepStatus; calls: { jobId: string; updateId: string }[] }> {
  const calls: { jobId: string; updateId: string }[] = [];
  const attempts = new Map<string, number>();
  const control: ControlMock = {
    runningJobs: async () => ({ jobs, unanswered }),
    jobState: async (i) => ({ state: 'Preempted', reason: `preempted: resumes from ${i.jobId}-preempt-9` }),
    preemptJob: async (i) => {
      calls.push(i);
      const n = (attempts.get(i.jobId) ?? 0) + 1;
      attempts.set(i.jobId, n);
      return answer(i.jobId, n);
    },
  };
  const result = await h.with(control, {}, () =>
    h.env.client.workflow.execute<typeof preemptionSweep>('preemptionSweep', {
      workflowId: id,
      taskQueue: CONTROL_QUEUE,
      args: [input],
    }),
  );
  return { result, calls };
}

describe('preemptionSweep workflow', () => {
  test('preempts the least important first (highest priority number, then youngest), at most max, never a critical job', async () => {
    const jobs = [
      job('p5-old', 5, OLD),
      job('p7-old', 7, OLD),
      job('p7-new', 7, NEW),
      job('p0', 0, NEW),
      job('p9-critical', 9, NEW, { tier: 'critical' }),
      job('p3', 3, NEW),
    ];
    const { result, calls } = await sweep('sweep/order', { schedule: 'nightly', belowPriority: 4, max: 2 }, jobs);
    expect(calls.map((c) => c.jobId)).toEqual(['p7-new', 'p7-old']);
    expect(result.phase).toBe('Done');
    expect(result.seen).toBe(6);
    expect(result.victims.map((v) => [v.job.jobId, v.outcome, v.checkpointId])).toEqual([
      ['p7-new', 'requeued', 'p7-new-preempt-1'],
      ['p7-old', 'requeued', 'p7-old-preempt-1'],
    ]);
    expect(Object.fromEntries(result.skipped.map((s) => [s.jobId, s.reason]))).toEqual({
      p0: 'critical',
      'p9-critical': 'critical',
      p3: 'not-below-priority',
      'p5-old': 'over-max',
    });
    expect(result.summary).toBe('2 of 2 victims preempted and requeued: p7-new requeued, p7-old requeued');
  });

  test('without --below-priority any non-critical job may be a victim; critical ones never, even when nothing else runs', async () => {
    const jobs = [job('p0', 0, NEW), job('crit', 10, NEW, { tier: 'critical' })];
    const { result, calls } = await sweep('sweep/critical', { schedule: null, max: 5 }, jobs);
    expect(calls).toEqual([]);
    expect(result.victims).toEqual([]);
    expect(result.skipped.map((s) => s.reason)).toEqual(['critical', 'critical']);
    expect(result.summary).toMatch(/^no victim among 2 running jobs/);
  });

  test('with a zone only jobs on nodes of that zone are chosen', async () => {
    const jobs = [
      job('z2-p9', 9, NEW, { node: 'node-b', zone: 'zone-2' }),
      job('z1-p6', 6, OLD),
      job('nozone-p9', 9, NEW, { node: 'node-c', zone: null }),
    ];
    // A job whose workflow did not answer is never guessed at: recorded, not preempted.
    const { result, calls } = await sweep('sweep/zone', { schedule: 's', max: 3, zone: 'zone-1' }, jobs, undefined, [
      'ghost',
    ]);
    expect(calls.map((c) => c.jobId)).toEqual(['z1-p6']);
    expect(result.skipped.map((s) => [s.jobId, s.reason])).toEqual([
      ['z2-p9', 'other-zone'],
      ['nozone-p9', 'other-zone'],
      ['ghost', 'unanswered'],
    ]);
  });

  test('a preemption that fails is recorded and the sweep goes on to the next victim', async () => {
    const jobs = [job('a', 9, NEW), job('b', 8, NEW), job('c', 7, NEW)];
    const { result, calls } = await sweep('sweep/fails', { schedule: 's', max: 3 }, jobs, async (jobId) => {
      if (jobId === 'a')
        throw ApplicationFailure.nonRetryable(
          'job a refused the preemption: job a is Pending',
          ErrorType.PreemptRefused,
        );
      if (jobId === 'b') throw ApplicationFailure.nonRetryable('frontend gone', 'Boom');
      return { checkpointId: 'c-preempt-1', outcome: 'requeued', message: '' };
    });
    expect(calls.map((c) => c.jobId)).toEqual(['a', 'b', 'c']);
    expect(result.victims.map((v) => [v.job.jobId, v.outcome])).toEqual([
      ['a', 'refused'],
      ['b', 'unknown'],
      ['c', 'requeued'],
    ]);
    expect(result.victims[0].message).toMatch(/job a is Pending/);
    expect(result.victims[1].message).toBe(
      'preemptJob: Boom: frontend gone; outcome unknown: the job is now Preempted (preempted: resumes from b-preempt-9)',
    );
    expect(result.summary).toBe('1 of 3 victims preempted and requeued: a refused, b unknown, c requeued');
  });

  test('a retried preemption asks with the same updateId, so the job is never preempted twice', async () => {
    const { result, calls } = await sweep(
      'sweep/retry',
      { schedule: 's', max: 1 },
      [job('a', 9, NEW)],
      async (_, n) => {
        if (n === 1) throw new Error('connection reset');
        return { checkpointId: 'a-preempt-1', outcome: 'requeued', message: '' };
      },
    );
    expect(calls).toEqual([
      { jobId: 'a', updateId: 'sweep/retry/a' },
      { jobId: 'a', updateId: 'sweep/retry/a' },
    ]);
    expect(result.victims[0].outcome).toBe('requeued');
  });

  test('a sweep that cannot list the running jobs fails SweepFailed, preempting nothing, its status in the failure', async () => {
    let preempted = false;
    const err = await h
      .with(
        {
          runningJobs: async () => {
            throw ApplicationFailure.nonRetryable('visibility store down', 'Boom');
          },
          preemptJob: async () => ((preempted = true), { checkpointId: 'x', outcome: 'requeued', message: '' }),
        },
        {},
        () =>
          h.env.client.workflow.execute<typeof preemptionSweep>('preemptionSweep', {
            workflowId: 'sweep/unlisted',
            taskQueue: CONTROL_QUEUE,
            args: [{ schedule: 's', max: 1 }],
          }),
      )
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const cause = (err as WorkflowFailedError).cause as ApplicationFailure;
    expect(cause.type).toBe(ErrorType.SweepFailed);
    expect(cause.message).toMatch(
      /^could not list running jobs: runningJobs: Boom: visibility store down; nothing preempted$/,
    );
    expect((cause.details?.[0] as SweepStatus).phase).toBe('Done');
    expect(preempted).toBe(false);
  });

  test('a bad input fails at once naming the field, nothing listed', async () => {
    let listed = false;
    const err = await h
      .with({ runningJobs: async () => ((listed = true), { jobs: [], unanswered: [] }) }, {}, () =>
        h.env.client.workflow.execute<typeof preemptionSweep>('preemptionSweep', {
          workflowId: 'sweep/bad',
          taskQueue: CONTROL_QUEUE,
          args: [{ schedule: 's', max: 0 }],
        }),
      )
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    expect(((err as WorkflowFailedError).cause as ApplicationFailure).message).toMatch(/^invalid sweep: max: must be/);
    expect(listed).toBe(false);
  });
});

describe('chunkGc workflow', () => {
  const result = (deleted: number): ChunkGcResult => ({
    outcome: 'collected',
    reason: null,
    dryRun: false,
    checkpoints: 2,
    unreadableMetadata: [],
    chunks: 10,
    chunkBytes: 10 << 20,
    referenced: 10 - deleted,
    keptRecent: 0,
    deleted,
    deletedBytes: deleted << 20,
  });

  test('S3 away: the collection is tried again with backoff until it answers; its counts are the result', async () => {
    let calls = 0;
    const control: ControlMock = {
      collectChunks: async (i) => {
        calls++;
        expect(i).toEqual({ minAgeMs: 3_600_000 });
        if (calls < 3) throw ApplicationFailure.retryable('S3 not answering', ErrorType.S3Unavailable);
        return result(4);
      },
    };
    const r = await h.with(control, {}, () =>
      h.env.client.workflow.execute<typeof chunkGc>('chunkGc', {
        workflowId: 'chunk-gc/retry',
        taskQueue: CONTROL_QUEUE,
        args: [{ minAgeMs: 3_600_000 }],
      }),
    );
    expect(calls).toBe(3);
    expect(r).toEqual(result(4));
  });

  test.each([
    ['chunkGc', { minAgeMs: -1 }],
    ['scheduledChunkGc', { minAgeMs: 1.5 }],
  ] as const)('%s: a bad input is refused, naming the field, before any collection runs', async (type, input) => {
    let calls = 0;
    const control: ControlMock = {
      collectChunks: async () => {
        calls++;
        return result(0);
      },
    };
    const err = await h
      .with(control, {}, () =>
        h.env.client.workflow.execute<typeof chunkGc>(type, {
          workflowId: `chunk-gc/bad-${type}`,
          taskQueue: CONTROL_QUEUE,
          args: [input],
        }),
      )
      .then(
        () => null,
        (e: unknown) => e,
      );
    expect(err).toBeInstanceOf(WorkflowFailedError);
    expect(((err as WorkflowFailedError).cause as Error).message).toContain('minAgeMs');
    expect(calls).toBe(0);
  });

  test('a scheduled collection runs as the child chunk-gc, the id `kybernate gc` uses, and returns its counts', async () => {
    const control: ControlMock = { collectChunks: async () => result(3) };
    const r = await h.with(control, {}, () =>
      h.env.client.workflow.execute<typeof scheduledChunkGc>('scheduledChunkGc', {
        workflowId: 'chunk-gc-scheduled/one',
        taskQueue: CONTROL_QUEUE,
        args: [{ minAgeMs: 60_000 }],
      }),
    );
    expect(r).toEqual(result(3));
    const child = await h.env.client.workflow.getHandle('chunk-gc').describe();
    expect(child.type).toBe('chunkGc');
    expect(child.parentExecution?.workflowId).toBe('chunk-gc-scheduled/one');
  });

  test('a scheduled collection while another runs: skipped, saying why; the running one goes on to its end', async () => {
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    let called!: () => void;
    const collecting = new Promise<void>((resolve) => (called = resolve));
    let calls = 0;
    const control: ControlMock = {
      collectChunks: async () => {
        calls++;
        called();
        await released;
        return result(5);
      },
    };
    const [skipped, manual] = await h.with(control, {}, async () => {
      const running = await h.env.client.workflow.start<typeof chunkGc>('chunkGc', {
        workflowId: 'chunk-gc',
        taskQueue: CONTROL_QUEUE,
        args: [{ minAgeMs: 3_600_000 }],
      });
      await collecting;
      const s = await h.env.client.workflow.execute<typeof scheduledChunkGc>('scheduledChunkGc', {
        workflowId: 'chunk-gc-scheduled/two',
        taskQueue: CONTROL_QUEUE,
        args: [{ minAgeMs: 60_000 }],
      });
      release();
      return [s, await running.result()];
    });
    expect(skipped.outcome).toBe('skipped');
    expect(skipped.reason).toMatch(/a collection is running already \(workflow chunk-gc\)/);
    expect(skipped.deleted).toBe(0);
    expect(manual).toEqual(result(5));
    expect(calls).toBe(1);
  });
});
