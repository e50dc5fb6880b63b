import { ApplicationFailure } from '@temporalio/activity';
import { WorkflowFailedError } from '@temporalio/client';
import type { ReadRunLogInput, ReadRunLogResult } from '../../common/job';
import { CONTROL_QUEUE } from '../../common/queues';
import type { readJobLog, ReadJobLogInput } from '../../workflows/job-log';
import { Harness } from './harness';

let h: Harness;
beforeAll(async () => {
  h = await Harness.create();
  // The first workflow of a fresh time-skipping server can time out while the workers start (as in restore.test.ts).
  await withNodes({ 'node-w': async () => ({ lines: [], nextOffset: 0, size: 0 }) }, () =>
    read('warmup', { node: 'node-w', jobId: 'w', logFile: LOG, offset: 0 }),
  ).catch(() => undefined);
}, 120000);
afterAll(async () => h?.teardown());
afterEach(async () => h?.reset());

type ReadRunLog = (input: ReadRunLogInput) => Promise<ReadRunLogResult>;

/** Runs fn with the control worker and an agent per node whose readRunLog is mocked. */
async function withNodes<T>(nodes: Record<string, ReadRunLog>, fn: () => Promise<T>): Promise<T> {
  const workers = await Promise.all(
    Object.entries(nodes).map(([node, readRunLog]) => h.nodeWorker(node, { readRunLog })),
  );
  const runAll = (i: number): Promise<T> =>
    i === workers.length ? h.with({}, {}, fn) : workers[i].runUntil(() => runAll(i + 1));
  return runAll(0);
}

const read = (id: string, input: ReadJobLogInput): Promise<ReadRunLogResult> =>
  h.env.client.workflow.execute<typeof readJobLog>('readJobLog', {
    workflowId: id,
    taskQueue: CONTROL_QUEUE,
    args: [input],
  });

const LOG = '/data/node-b/workloads/j1/runs/1/log';
const answer: ReadRunLogResult = {
  lines: [{ time: '2026-01-01T00:00:00Z', stream: 'stdout', partial: false, text: 'tick 1' }],
  nextOffset: 44,
  size: 44,
};

describe('readJobLog workflow', () => {
  test("reads on the run's node, from the offset asked, and hands back the node's answer", async () => {
    const seen: Record<string, ReadRunLogInput[]> = { 'node-a': [], 'node-b': [] };
    const result = await withNodes(
      {
        'node-a': async (i) => (seen['node-a'].push(i), { lines: [], nextOffset: 0, size: 0 }),
        'node-b': async (i) => (seen['node-b'].push(i), answer),
      },
      () => read('logs/j1/a', { node: 'node-b', jobId: 'j1', logFile: LOG, offset: 12, maxBytes: 4096 }),
    );
    expect(result).toEqual(answer);
    expect(seen).toEqual({ 'node-a': [], 'node-b': [{ jobId: 'j1', logFile: LOG, offset: 12, maxBytes: 4096 }] });
  });

  test('a read cut off (the agent went away mid-read) is asked again from the same offset', async () => {
    const offsets: number[] = [];
    const result = await withNodes(
      {
        'node-b': async (i) => {
          offsets.push(i.offset);
          if (offsets.length === 1) throw new Error('agent went away');
          return answer;
        },
      },
      () => read('logs/j1/b', { node: 'node-b', jobId: 'j1', logFile: LOG, offset: 7 }),
    );
    expect(result).toEqual(answer);
    expect(offsets).toEqual([7, 7]);
  });

  test('a bad input fails at once naming the field, before the node is asked; a node refusing a path is not retried', async () => {
    let calls = 0;
    const failures = await withNodes(
      {
        'node-b': async () => {
          calls++;
          throw ApplicationFailure.nonRetryable('logFile: not a log of job j1', 'InvalidInput');
        },
      },
      async () => [
        // One at a time: the time-skipping server may skip past a workflow task that a loaded machine is slow to finish.
        await read('logs/j1/c', { node: 'a/b', jobId: 'j1', logFile: LOG, offset: 0 }).catch((e: unknown) => e),
        await read('logs/j1/d', { node: 'node-b', jobId: 'j1', logFile: LOG, offset: -1 }).catch((e: unknown) => e),
        await read('logs/j1/e', { node: 'node-b', jobId: 'j1', logFile: '/etc/passwd', offset: 0 }).catch(
          (e: unknown) => e,
        ),
      ],
    );
    for (const f of failures) expect(f).toBeInstanceOf(WorkflowFailedError);
    const causes = failures.map((f) => (f as WorkflowFailedError).cause);
    expect(causes[0]).toBeInstanceOf(ApplicationFailure);
    expect([(causes[0] as ApplicationFailure).type, causes[0]?.message]).toEqual([
      'InvalidInput',
      expect.stringMatching(/^invalid log read: node: /),
    ]);
    expect([(causes[1] as ApplicationFailure).type, causes[1]?.message]).toEqual([
      'InvalidInput',
      expect.stringMatching(/^invalid log read: offset: /),
    ]);
    expect((causes[2]?.cause as Error | undefined)?.message).toBe('logFile: not a log of job j1');
    expect(calls).toBe(1);
  });
});
