import { ApplicationFailure } from '@temporalio/activity';
import { type WorkflowHandle, WorkflowClient } from '@temporalio/client';
import { createHealthActivities } from '../../activities/control/health';
import { healthReport, type HealthReport, type HealthSnapshot } from '../../common/health';
import { CONTROL_QUEUE, restoreWorkflowId } from '../../common/queues';
import type { Candidate, RestoreStatus } from '../../common/restore';
import {
  configureHealthSignal,
  healthQuery,
  nodeOutcomeSignal,
  PLACEMENT_WORKFLOW_ID,
  reserveUpdate,
} from '../../workflows/placement';
import { type ControlMock, Harness, type NodeMock } from './harness';

/**
 * Node health and zone breakers in the placement workflow (time skipping): quarantine, recovery by decay alone,
 * a throttled zone beside one at full speed, half-open probing; and a restore whose node lies (says CRIU
 * restored, nothing runs) reporting that node into quarantine through the real reportNodeOutcome activity.
 */
let h: Harness;
beforeAll(async () => {
  h = await Harness.create();
}, 120000);
afterAll(async () => h?.teardown());
afterEach(async () => h?.reset());

/**
 * Held for each test: on the time-skipping test server a placement workflow that took a signal or a query and
 * then an update was seen to run straight into its 10-year run timeout (time skipped while nothing was locked).
 * With one more lock time moves only through h.env.sleep, as these tests mean it to.
 */
beforeEach(async () => {
  await h.env.connection.testService?.lockTimeSkipping({});
});
afterEach(async () => {
  await h.env.connection.testService?.unlockTimeSkipping({});
});

const GiB = 1024 ** 3;
const cand = (node: string, zone: string): Candidate => ({
  node,
  zone,
  freeVramBytes: 16 * GiB,
  vramSource: 'declared',
});

async function startPlacement(): Promise<WorkflowHandle> {
  return h.env.client.workflow.start('placement', {
    workflowId: PLACEMENT_WORKFLOW_ID,
    taskQueue: CONTROL_QUEUE,
    args: [{}],
  });
}

let seq = 0;
const report = (
  p: WorkflowHandle,
  node: string,
  zone: string,
  ok: boolean,
  kind?: 'failedStep' | 'failedVerification',
) => p.signal(nodeOutcomeSignal, { id: `o${++seq}`, node, zone, ok, ...(kind ? { kind } : {}), detail: 'test' });
const reserve = (p: WorkflowHandle, id: string, candidates: Candidate[]) =>
  p.executeUpdate(reserveUpdate, { args: [{ reservationId: id, bytes: GiB, candidates }] });
/** The raw state, and the report at the workflow time of its last task (or at `ms`). */
const health = async (p: WorkflowHandle): Promise<{ raw: HealthSnapshot; at: (ms?: number) => HealthReport }> => {
  const raw = await p.query(healthQuery);
  return { raw, at: (ms = Date.parse(raw.at)) => healthReport(raw, ms) };
};
const nodeIn = (r: HealthReport, node: string) => r.nodes.find((n) => n.node === node);
const zoneIn = (r: HealthReport, zone: string) => r.zones.find((z) => z.zone === zone);

describe('node health in the placement workflow', () => {
  test('a lying node is quarantined (skipped, with the reason recorded) and recovers by decay alone', async () => {
    await h.with({}, {}, async () => {
      const p = await startPlacement();
      await p.signal(configureHealthSignal, { halfLifeMs: 60_000 });
      await report(p, 'liar', 'z1', false, 'failedVerification');
      await report(p, 'liar', 'z1', false, 'failedVerification'); // a different report id: counts again
      expect((await reserve(p, 'r1', [cand('liar', 'z1'), cand('honest', 'z1')]))?.node).toBe('honest');
      // Only the liar left: nothing now (the restore lists candidates again later).
      expect(await reserve(p, 'r2', [cand('liar', 'z1')])).toBeNull();
      // Two lies: quarantined for log2(2 / 0.7) ~= 1.51 half-lives (91 s), by decay alone.
      await h.env.sleep(100_000);
      expect((await reserve(p, 'r3', [cand('liar', 'z1')]))?.node).toBe('liar');

      const { raw, at } = await health(p);
      const lied = raw.nodes.find((n) => n.node === 'liar')?.failures[1]?.at ?? NaN;
      const then = at(lied);
      expect(nodeIn(then, 'liar')).toMatchObject({ state: 'Quarantined', zone: 'z1', score: 0 });
      const until = Date.parse(nodeIn(then, 'liar')?.quarantinedUntil ?? '') - lied;
      expect(until / 60_000).toBeCloseTo(Math.log2(2 / 0.7), 2);
      const now = at();
      expect(nodeIn(now, 'liar')).toMatchObject({ state: 'Healthy', quarantinedUntil: null });
      expect(nodeIn(now, 'liar')?.score).toBeGreaterThanOrEqual(0.3);
      expect(nodeIn(now, 'liar')?.recentFailures).toHaveLength(2);
      expect(raw.decisions).toEqual([
        expect.objectContaining({
          reservationId: 'r1',
          node: 'liar',
          why: expect.stringMatching(/^quarantined \(score 0\.00\)/),
        }),
        expect.objectContaining({ reservationId: 'r2', node: 'liar', why: expect.stringMatching(/^quarantined/) }),
      ]);
    });
  });

  test('a report delivered twice (a retried activity) counts once', async () => {
    await h.with({}, {}, async () => {
      const p = await startPlacement();
      const o = { id: 'same', node: 'n1', zone: 'z1', ok: false, kind: 'failedStep' as const, detail: 'criu' };
      await p.signal(nodeOutcomeSignal, o);
      await p.signal(nodeOutcomeSignal, o);
      const r = (await health(p)).at();
      expect(nodeIn(r, 'n1')?.recentFailures).toHaveLength(1);
      expect(nodeIn(r, 'n1')?.score).toBeCloseTo(0.75);
      expect(zoneIn(r, 'z1')?.window).toEqual({ ok: 0, failed: 1, rate: 1 });
    });
  });
});

describe('zone circuit breaker in the placement workflow', () => {
  /** Five failed placements in z1 on five nodes (none quarantined by one failed step): its breaker opens. */
  async function openZone(p: WorkflowHandle): Promise<void> {
    for (let i = 1; i <= 5; i++) await report(p, `a${i}`, 'z1', false, 'failedStep');
  }
  const waitOf = (why: string): number => Number(/next placement in (\d+) ms/.exec(why)?.[1]);

  test('an Open zone takes one placement per throttle interval while the other zone runs at full speed', async () => {
    await h.with({}, {}, async () => {
      const p = await startPlacement();
      // 3 s rather than the default 1 s: on a loaded machine two updates can be a second apart by themselves.
      await p.signal(configureHealthSignal, { zoneThrottleMs: 3000 });
      await openZone(p);
      expect((await reserve(p, 'z1-1', [cand('a1', 'z1')]))?.node).toBe('a1');
      // The next placement into z1 goes to z2 at once when z2 is a candidate too...
      expect((await reserve(p, 'z1-2', [cand('a2', 'z1'), cand('b1', 'z2')]))?.node).toBe('b1');
      // ...z1 alone: the reserve waits for the zone's next slot (a workflow timer), then places there...
      expect((await reserve(p, 'z1-3', [cand('a3', 'z1')]))?.node).toBe('a3');
      // ...and z2 is never held back.
      for (let i = 0; i < 5; i++) expect((await reserve(p, `z2-${i}`, [cand('b1', 'z2')]))?.node).toBe('b1');

      const { raw, at } = await health(p);
      const r = at();
      expect(zoneIn(r, 'z1')).toMatchObject({ state: 'Open', window: { ok: 0, failed: 5, rate: 1 } });
      expect(nodeIn(r, 'a1')?.state).toBe('Healthy');
      expect(raw.decisions.map((d) => `${d.reservationId} ${d.node}`)).toEqual(['z1-2 a2', 'z1-3 a3']);
      expect(raw.decisions[0].why).toMatch(/^zone z1 throttled \(breaker Open\): next placement in \d+ ms/);
      const d3 = raw.decisions[1];
      expect(waitOf(d3.why)).toBeGreaterThan(0);
      expect(waitOf(d3.why)).toBeLessThanOrEqual(3000);
      const z1 = raw.zones.find((z) => z.zone === 'z1');
      // Placed no sooner than the slot it was told to wait for.
      expect((z1?.lastPlacementAt ?? 0) - Date.parse(d3.at)).toBeGreaterThanOrEqual(waitOf(d3.why));
      expect(raw.zones.find((z) => z.zone === 'z2')?.state).toBe('Closed');
    });
  });

  test('half-open after the cool-down: a failed probe opens it again, successful probes close it', async () => {
    await h.with({}, {}, async () => {
      const p = await startPlacement();
      // A 5 s throttle: the probes p1, p2 and p3 are sent back to back, well inside it even on a loaded machine.
      await p.signal(configureHealthSignal, { zoneCoolDownMs: 30_000, zoneThrottleMs: 5000 });
      await openZone(p);
      await h.env.sleep(31_000);
      expect((await reserve(p, 'p1', [cand('a1', 'z1')]))?.node).toBe('a1'); // the first probe goes at once
      expect((await reserve(p, 'p2', [cand('a1', 'z1')]))?.node).toBe('a1'); // the next one a throttle interval later
      await report(p, 'a1', 'z1', false, 'failedStep'); // a failed probe
      expect((await reserve(p, 'p3', [cand('a2', 'z1')]))?.node).toBe('a2');
      await h.env.sleep(31_000);
      // 6 failures: 14 successful probes bring the rate to 0.3.
      for (let i = 0; i < 14; i++) await report(p, `a${(i % 5) + 1}`, 'z1', true);
      expect((await reserve(p, 'c1', [cand('a1', 'z1')]))?.node).toBe('a1');
      expect((await reserve(p, 'c2', [cand('a1', 'z1')]))?.node).toBe('a1');

      const { raw, at } = await health(p);
      expect(zoneIn(at(), 'z1')).toMatchObject({ state: 'Closed', window: { ok: 14, failed: 6 } });
      const why = raw.decisions.map((d) => `${d.reservationId}: ${d.why.replace(/in \d+ ms/, 'in N ms')}`);
      expect(why).toEqual([
        'p2: zone z1 throttled (breaker HalfOpen): next placement in N ms',
        'p3: zone z1 throttled (breaker Open): next placement in N ms',
      ]);
    });
  });
});

/**
 * Two nodes in two zones, the liar listed first; its verification fails as `liarVerify` says. Restores go
 * through a plain client (the time-skipping one unlocks time while it waits for a result, and the jump ahead
 * would decay the lie before a second restore places).
 */
async function liarAndHonest(liarVerify: NonNullable<NodeMock['verifyRunning']>): Promise<{
  fetched: string[];
  p: WorkflowHandle;
  control: ControlMock;
  nodes: Record<string, NodeMock>;
  restore: (checkpointId: string) => Promise<RestoreStatus>;
}> {
  const fetched: string[] = [];
  const nodeMock = (name: string, over: NodeMock = {}): NodeMock => ({
    fetch: async ({ checkpointId }) => {
      fetched.push(name);
      return {
        dir: `/d/${checkpointId}`,
        bytes: 1,
        source: 's3' as const,
        staged: false,
        jobId: 'j',
        vramBytes: GiB,
      };
    },
    criuRestore: async () => ({ pid: 777, startTime: 5000 }),
    checkVram: async () => ({ freeVramBytes: 16 * GiB }),
    cudaRestore: async () => ({ outcome: 'skipped' as const, detail: 'no CUDA' }),
    cudaUnlock: async () => ({ outcome: 'skipped' as const, detail: 'no CUDA' }),
    verifyRunning: async () => ({ state: 'S', cuda: 'none', probes: 0, afterMs: 1, detail: 'ok' }),
    adoptWorkload: async () => undefined,
    killProcess: async () => ({ killed: false }),
    ...over,
  });
  const nodes = {
    liar: nodeMock('liar', { verifyRunning: liarVerify }),
    honest: nodeMock('honest'),
  };
  const p = await startPlacement();
  const control: ControlMock = {
    checkpointInfo: async ({ checkpointId }) => ({
      checkpointId,
      jobId: 'j',
      node: 'liar',
      tier: 's3',
      vramBytes: GiB,
    }),
    placementSurvey: async () => ({ nodes: [], largestGpuBytes: 80 * GiB }),
    jobOpen: async () => ({ open: false, state: null }),
    placementCandidates: async ({ exclude }) =>
      [cand('liar', 'z1'), cand('honest', 'z2')].filter((c) => !exclude.includes(c.node)),
    reserve: async (input) => p.executeUpdate(reserveUpdate, { args: [input] }),
    release: async () => undefined,
    reportNodeOutcome: createHealthActivities(h.env.client).reportNodeOutcome,
  };
  // A plain client: the time-skipping one unlocks time while it waits for a result, and the jump ahead would
  // decay the lie before the second restore places.
  const plain = new WorkflowClient({ connection: h.env.connection, namespace: h.env.namespace ?? 'default' });
  const restore = (checkpointId: string): Promise<RestoreStatus> =>
    plain.execute('restore', {
      workflowId: restoreWorkflowId(checkpointId, 1),
      taskQueue: CONTROL_QUEUE,
      args: [{ checkpointId, placementDeadline: '1m' }],
    });
  return { fetched, p, control, nodes, restore };
}

describe('restore outcomes feed node health', () => {
  test('a node whose restore says success and runs nothing is quarantined; the restore runs on the other node', async () => {
    const { fetched, p, control, nodes, restore } = await liarAndHonest(async () => {
      throw ApplicationFailure.nonRetryable('no such process: pid 777 (restored process gone)', 'NoSuchProcess');
    });
    await h.with(control, nodes, async () => {
      const first = await restore('ck-1');
      // The next restore never goes to the quarantined liar, though it is still listed first.
      fetched.length = 0;
      const second = await restore('ck-2');
      expect(second.attempts.map((a) => a.node)).toEqual(['honest']);
      expect(fetched).toEqual(['honest']);

      expect(first.phase).toBe('Running');
      expect(first.attempts.map((a) => `${a.node} ${a.outcome} ${a.phase}`)).toEqual([
        'liar failed Verifying',
        'honest running Running',
      ]);
      const { raw, at } = await health(p);
      const r = at(Date.parse(raw.at));
      expect(nodeIn(r, 'liar')).toMatchObject({ state: 'Quarantined', zone: 'z1' });
      expect(nodeIn(r, 'liar')?.recentFailures).toEqual([
        expect.objectContaining({
          kind: 'failedVerification',
          detail: expect.stringMatching(/^ck-1: .*restored process gone/),
        }),
      ]);
      expect(nodeIn(r, 'honest')).toMatchObject({ state: 'Healthy', score: 1, zone: 'z2' });
      expect(zoneIn(r, 'z2')?.window).toEqual({ ok: 2, failed: 0, rate: 0 });
      expect(raw.decisions).toEqual([
        expect.objectContaining({ node: 'liar', why: expect.stringMatching(/^quarantined/) }),
      ]);
    });
  });

  test('a restore whose readiness target is not reached after its probes counts as unreachedTarget (0.5): not quarantined by one', async () => {
    const { p, control, nodes, restore } = await liarAndHonest(async () => {
      throw ApplicationFailure.nonRetryable(
        'readiness probe (tcp 127.0.0.1:6379) failed 3 times in a row; last: connection refused',
        'NotReady',
      );
    });
    await h.with(control, nodes, async () => {
      const first = await restore('ck-r1');
      expect(first.attempts.map((a) => `${a.node} ${a.outcome} ${a.phase}`)).toEqual([
        'liar failed Verifying',
        'honest running Running',
      ]);
      const { raw, at } = await health(p);
      const r = at(Date.parse(raw.at));
      expect(nodeIn(r, 'liar')?.recentFailures).toEqual([
        expect.objectContaining({
          kind: 'unreachedTarget',
          detail: expect.stringMatching(/^ck-r1: .*failed 3 times in a row/),
        }),
      ]);
      expect(nodeIn(r, 'liar')?.score).toBeCloseTo(0.5, 2);
      expect(nodeIn(r, 'liar')?.state).not.toBe('Quarantined');
      // A second miss within the half-life crosses 0.3: quarantined.
      await restore('ck-r2');
      const again = await health(p);
      expect(nodeIn(again.at(Date.parse(again.raw.at)), 'liar')).toMatchObject({ state: 'Quarantined' });
    });
  });
});
