import * as path from 'node:path';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import { bundleWorkflowCode, type WorkflowBundleWithSourceMap, Worker } from '@temporalio/worker';
import type { NodeActivities } from '../../activities/node';
import type { WatchActivities } from '../../activities/node/watch';
import type { ControlActivities } from '../../activities/control';
import { CONTROL_QUEUE, nodeQueue } from '../../common/queues';
import { timeSkippingEnv } from './env';

type AgentActivities = NodeActivities & WatchActivities;
export type NodeMock = { [K in keyof AgentActivities]?: AgentActivities[K] };
export type ControlMock = { [K in keyof ControlActivities]?: ControlActivities[K] };

// A test here waits on real activity work and on replays (no sticky cache: every task and query replays the
// whole history), both CPU-bound: on a busy machine a test that takes seconds can take minutes. The limit is a
// hang detector, not a speed check.
jest.setTimeout(300_000);

const quiet = {
  log: () => undefined,
  trace: () => undefined,
  debug: () => undefined,
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
};

/** A time-skipping test server, the real workflow bundle, and mocked activities per node. */
export class Harness {
  private constructor(
    readonly env: TestWorkflowEnvironment,
    private readonly bundle: WorkflowBundleWithSourceMap,
  ) {}

  static async create(): Promise<Harness> {
    const env = await timeSkippingEnv();
    const bundle = await bundleWorkflowCode({
      workflowsPath: path.resolve(__dirname, '../../workflows'),
      logger: quiet,
    });
    return new Harness(env, bundle);
  }

  /** Runs fn while a control worker (workflows + control activities) and one worker per mocked node poll. */
  async with<T>(control: ControlMock, nodes: Record<string, NodeMock>, fn: () => Promise<T>): Promise<T> {
    const workers = [
      // No sticky cache: long-lived workflows (a node's promotion loop) outlive the test that started them, and
      // the test server never moves a task off a stopped worker's sticky queue to the next test's worker.
      await this.track(
        Worker.create({
          connection: this.env.nativeConnection,
          taskQueue: CONTROL_QUEUE,
          workflowBundle: this.bundle,
          activities: control,
          maxCachedWorkflows: 0,
        }),
      ),
      ...(await Promise.all(Object.entries(nodes).map(([node, acts]) => this.nodeWorker(node, acts)))),
    ];
    const runAll = (i: number): Promise<T> => (i === workers.length ? fn() : workers[i].runUntil(() => runAll(i + 1)));
    return runAll(0);
  }

  /** A worker for one node's queue (an agent), stopped by teardown if the test that made it never did. */
  nodeWorker(node: string, activities: NodeMock): Promise<Worker> {
    return this.track(
      Worker.create({
        connection: this.env.nativeConnection,
        taskQueue: nodeQueue(node),
        activities,
        shutdownGraceTime: '1s',
      }),
    );
  }

  private readonly workers = new Set<Worker>();

  private async track(creating: Promise<Worker>): Promise<Worker> {
    const w = await creating;
    this.workers.add(w);
    return w;
  }

  /**
   * After each test: every workflow it left open is terminated, and every worker it left running stopped.
   * Left open, a test's long-lived workflows (children abandoned by design, a node's loops) keep firing timers
   * as later tests skip time, and without a sticky cache each of their tasks replays a whole history: a file
   * slowed down test by test until one timed out. A timed-out test never reaches runUntil's end, so its
   * workers would still hold the queues the next test's workers need.
   */
  async reset(): Promise<void> {
    await this.terminateOpen();
    await this.stopLeaked();
  }

  private async terminateOpen(): Promise<void> {
    const svc = this.env.client.workflowService;
    let nextPageToken: Uint8Array | undefined;
    do {
      const page = await svc.listOpenWorkflowExecutions({
        namespace: this.env.namespace ?? 'default',
        maximumPageSize: 1000,
        nextPageToken,
      });
      for (const e of page.executions) {
        const id = e.execution?.workflowId;
        if (id)
          await this.env.client.workflow
            .getHandle(id)
            .terminate('test over')
            .catch(() => undefined);
      }
      nextPageToken = page.nextPageToken?.length ? page.nextPageToken : undefined;
    } while (nextPageToken);
  }

  private async stopLeaked(): Promise<void> {
    const leaked = [...this.workers].filter((w) => w.getState() === 'RUNNING');
    for (const w of leaked) w.shutdown();
    const deadline = Date.now() + 30_000;
    while (leaked.some((w) => !['STOPPED', 'FAILED'].includes(w.getState())) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
    }
    for (const w of this.workers) if (['STOPPED', 'FAILED'].includes(w.getState())) this.workers.delete(w);
  }

  /**
   * Stops what the last test left, then the server. Workers outliving their server retry their polls forever
   * and keep jest from exiting: a CI run once hung that way until its time limit.
   */
  async teardown(): Promise<void> {
    await this.stopLeaked();
    await this.env.teardown();
  }
}
