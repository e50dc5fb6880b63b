import { ApplicationFailure } from '@temporalio/activity';
import { WorkflowFailedError } from '@temporalio/client';
import { CONTROL_QUEUE } from '../../common/queues';
import { Harness } from './harness';

let h: Harness;
beforeAll(async () => {
  h = await Harness.create();
  // The first workflow of a fresh time-skipping server can time out while the workers start (as in restore.test.ts).
  await h
    .with({}, { 'node-a': { stopWorkload: async () => ({ stopped: false, signal: null, afterMs: 0 }) } }, () =>
      stop('warmup', { node: 'node-a', jobId: 'w' }),
    )
    .catch(() => undefined);
}, 120000);
afterAll(async () => h?.teardown());
afterEach(async () => h?.reset());

type StopInput = { jobId: string; graceMs?: number; reason?: string };
const stop = (id: string, args: { node: string; jobId: string; graceMs?: number }): Promise<unknown> =>
  h.env.client.workflow.execute('stopWorkload', { workflowId: id, taskQueue: CONTROL_QUEUE, args: [args] });

describe('stopWorkload workflow', () => {
  test("asks the job's node to stop it, with a 30 s grace unless told otherwise", async () => {
    const seen: StopInput[] = [];
    const result = await h.with(
      {},
      {
        'node-a': {
          stopWorkload: async (input: StopInput) => (
            seen.push(input),
            { stopped: true, signal: 'SIGTERM' as const, afterMs: 120 }
          ),
        },
      },
      async () => [
        await stop('stop-default', { node: 'node-a', jobId: 'j1' }),
        await stop('stop-short', { node: 'node-a', jobId: 'j2', graceMs: 500 }),
      ],
    );
    expect(result).toEqual([
      { stopped: true, signal: 'SIGTERM', afterMs: 120 },
      { stopped: true, signal: 'SIGTERM', afterMs: 120 },
    ]);
    expect(seen.map((s) => [s.jobId, s.graceMs])).toEqual([
      ['j1', 30000],
      ['j2', 500],
    ]);
  });

  test('a stop cut off (the agent lost) is tried again: a stop is idempotent', async () => {
    let calls = 0;
    const result = await h.with(
      {},
      {
        'node-a': {
          stopWorkload: async () => {
            if (++calls === 1) throw new Error('agent went away');
            return { stopped: false, signal: null, afterMs: 0 };
          },
        },
      },
      () => stop('stop-retried', { node: 'node-a', jobId: 'j3', graceMs: 100 }),
    );
    expect(calls).toBe(2);
    expect(result).toEqual({ stopped: false, signal: null, afterMs: 0 });
  });

  test('bad input is not retried', async () => {
    let calls = 0;
    const err = await h.with(
      {},
      {
        'node-a': {
          stopWorkload: async () => {
            calls++;
            throw ApplicationFailure.create({
              message: 'jobId: must not contain a path separator',
              type: 'InvalidInput',
            });
          },
        },
      },
      () => stop('stop-invalid', { node: 'node-a', jobId: 'x', graceMs: 100 }).catch((e: unknown) => e),
    );
    expect(err).toBeInstanceOf(WorkflowFailedError);
    expect(calls).toBe(1);
  });
});
