import type { WorkflowHandle } from '@temporalio/client';
import { placeable } from '../../activities/control';
import type { NodeInventory } from '../../activities/node/inventory';
import type { NodeHeartbeat, NodeRecord } from '../../common/node';
import { CONTROL_QUEUE, nodeWorkflowId } from '../../common/queues';
import type { nodeRegistry } from '../../workflows/node';
import { Harness } from './harness';

let h: Harness;
beforeAll(async () => {
  h = await Harness.create();
}, 120000);
afterAll(async () => h?.teardown());
afterEach(async () => h?.reset());

const inventory: NodeInventory = {
  node: 'n',
  zone: 'z1',
  vramSource: 'declared',
  gpus: [],
  totalVramBytes: 8 * 1024 ** 3,
  freeVramBytes: 8 * 1024 ** 3,
  freeDiskBytes: 1024 ** 3,
  criuVersion: 'n/a',
  reportedAt: '2026-01-01T00:00:00.000Z',
};

let seq = 0;
/** A fresh node name per test: the registry of one test never answers for the next. */
const nodeName = (): string => `liveness-${++seq}`;

function beat(node: string, hb: NodeHeartbeat, signalLimit?: number): Promise<WorkflowHandle<typeof nodeRegistry>> {
  return h.env.client.workflow.signalWithStart<typeof nodeRegistry, [NodeHeartbeat]>('nodeRegistry', {
    workflowId: nodeWorkflowId(node),
    taskQueue: CONTROL_QUEUE,
    args: [{ node, ...(signalLimit !== undefined ? { signalLimit } : {}) }],
    signal: 'heartbeat',
    signalArgs: [hb],
  });
}

/**
 * Runs fn with the server's clock held still but for h.env.sleep: between two steps of a test the server would
 * otherwise skip to the node's next timer on its own, and a node would miss heartbeats sent "5 s" apart.
 */
async function heldClock<T>(fn: () => Promise<T>): Promise<T> {
  const svc = h.env.connection.testService;
  if (!svc) throw new Error('not a time-skipping test server');
  await svc.lockTimeSkipping({});
  try {
    return await h.with({}, {}, fn);
  } finally {
    await svc.unlockTimeSkipping({});
  }
}

const status = (node: string): Promise<NodeRecord> =>
  h.env.client.workflow.getHandle(nodeWorkflowId(node)).query<NodeRecord>('status');

describe('node registry: Ready | Unhealthy | Left', () => {
  test('heartbeats keep a node Ready; their silence for the timeout makes it Unhealthy; a heartbeat brings it back', async () => {
    const node = nodeName();
    await heldClock(async () => {
      const wf = await beat(node, { agentRun: 'run-1', timeoutMs: 15_000, heartbeatMs: 5_000 });
      await wf.signal('report', inventory);
      let s = await status(node);
      expect(s).toMatchObject({
        state: 'Ready',
        agentRuns: 1,
        timeoutMs: 15_000,
        heartbeatMs: 5_000,
        agentRun: 'run-1',
      });
      expect(s.inventory?.zone).toBe('z1');
      expect(placeable(s, Date.now())).toBe(true);
      // Heartbeats every 5 s for 40 s: never Unhealthy, though that is well past one timeout.
      for (let i = 0; i < 8; i++) {
        await h.env.sleep(5_000);
        await wf.signal('heartbeat', { agentRun: 'run-1', timeoutMs: 15_000, heartbeatMs: 5_000 });
      }
      expect((await status(node)).state).toBe('Ready');
      // Silence: still Ready short of the timeout, Unhealthy past it.
      await h.env.sleep(12_000);
      expect((await status(node)).state).toBe('Ready');
      await h.env.sleep(5_000);
      s = await status(node);
      expect(s.state).toBe('Unhealthy');
      expect(placeable(s, Date.now())).toBe(false);
      expect(s.lastSeen).not.toBeNull(); // kept: when it was last heard of
      // The same agent heard again (a network partition healed): Ready, counted as a registration.
      await wf.signal('heartbeat', { agentRun: 'run-1', timeoutMs: 15_000, heartbeatMs: 5_000 });
      s = await status(node);
      expect(s.state).toBe('Ready');
      expect(s.agentRuns).toBe(2);
      expect(s.transitions?.map((t) => [t.from, t.to])).toEqual([
        [null, 'Ready'],
        ['Ready', 'Unhealthy'],
        ['Unhealthy', 'Ready'],
      ]);
      expect(s.transitions?.[1].why).toMatch(/no heartbeat for 15000 ms/);
      const at = s.transitions?.map((t) => Date.parse(t.at)) ?? [];
      expect(at[1] - at[0]).toBeGreaterThanOrEqual(40_000 + 15_000);
    });
  });

  test('a clean leave makes the node Left at once; a leave from an older agent run is ignored; a new run is counted', async () => {
    const node = nodeName();
    await heldClock(async () => {
      const wf = await beat(node, { agentRun: 'run-1', timeoutMs: 15_000, heartbeatMs: 5_000 });
      await wf.signal('report', inventory);
      // The agent restarted within the timeout: a new run while Ready, counted.
      await wf.signal('heartbeat', { agentRun: 'run-2', timeoutMs: 15_000, heartbeatMs: 5_000 });
      expect(await status(node)).toMatchObject({ state: 'Ready', agentRuns: 2, agentRun: 'run-2' });
      // run-1's late leave says nothing about run-2.
      await wf.signal('leave', { agentRun: 'run-1', why: 'agent stopped (SIGTERM)' });
      expect((await status(node)).state).toBe('Ready');
      await wf.signal('leave', { agentRun: 'run-2', why: 'agent stopped (SIGTERM)' });
      let s = await status(node);
      expect(s.state).toBe('Left');
      expect(s.transitions?.at(-1)).toMatchObject({ from: 'Ready', to: 'Left', why: 'agent stopped (SIGTERM)' });
      expect(placeable(s, Date.now())).toBe(false);
      // Left stays Left past the timeout (it is not "Unhealthy": the agent said it went).
      await h.env.sleep(60_000);
      expect((await status(node)).state).toBe('Left');
      await wf.signal('heartbeat', { agentRun: 'run-3', timeoutMs: 15_000, heartbeatMs: 5_000 });
      s = await status(node);
      expect(s).toMatchObject({ state: 'Ready', agentRuns: 3, agentRun: 'run-3' });
      expect(s.transitions?.at(-1)).toMatchObject({ from: 'Left', to: 'Ready', why: 'agent back after leaving' });
    });
  });

  test('continues as new with its whole state and the Unhealthy deadline it had', async () => {
    const node = nodeName();
    await heldClock(async () => {
      const wf = await beat(node, { agentRun: 'run-1', timeoutMs: 60_000, heartbeatMs: 5_000 }, 10);
      await wf.signal('report', inventory);
      const firstRun = (await wf.describe()).runId;
      await h.env.sleep(40_000);
      // Signals that are no sign of life (an old run's leave) grow the history until the run continues as new,
      // 40 s after the last heartbeat: the new run must keep the deadline at 60 s, not start a fresh 60 s.
      for (let i = 0; i < 12; i++) await wf.signal('leave', { agentRun: 'an-old-run' });
      let runId = firstRun;
      // The worker takes its time (no cache: every task replays the history); the clock is held meanwhile.
      for (let i = 0; i < 300 && runId === firstRun; i++) {
        await new Promise((r) => setTimeout(r, 100));
        runId = (await h.env.client.workflow.getHandle(nodeWorkflowId(node)).describe()).runId;
      }
      expect(runId).not.toBe(firstRun);
      const s = await status(node);
      expect(s).toMatchObject({ state: 'Ready', agentRuns: 1, agentRun: 'run-1', timeoutMs: 60_000 });
      expect(s.inventory?.zone).toBe('z1');
      expect(s.transitions).toHaveLength(1);
      await h.env.sleep(15_000); // 55 s since the heartbeat
      expect((await status(node)).state).toBe('Ready');
      await h.env.sleep(10_000); // 65 s
      expect((await status(node)).state).toBe('Unhealthy');
    });
  });

  test('a report-only record (a registry from before liveness) is placeable while its report is recent', () => {
    const rec: NodeRecord = { node: 'old', inventory, lastSeen: new Date(1_000_000).toISOString(), agentRuns: 0 };
    expect(placeable(rec, 1_000_000 + 60_000)).toBe(true);
    expect(placeable(rec, 1_000_000 + 3 * 60_000)).toBe(false);
    expect(placeable({ ...rec, state: 'Unhealthy' }, 1_000_000)).toBe(false);
    expect(placeable({ ...rec, inventory: null, state: 'Ready' }, 1_000_000)).toBe(false);
  });
});
