import { WorkflowUpdateFailedError, type WorkflowHandle } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import {
  ADMISSION_REFUSED,
  ADMISSION_WORKFLOW_ID,
  type AdmissionConfig,
  type AdmissionRefusal,
  type AdmissionStatus,
} from '../../common/admission';
import { CONTROL_QUEUE } from '../../common/queues';
import { admission, admissionStatusQuery, admitUpdate, configureUpdate, settleSignal } from '../../workflows/admission';
import { type ControlMock, Harness } from './harness';

let h: Harness;
beforeAll(async () => {
  h = await Harness.create();
}, 120000);
afterAll(async () => h?.teardown());
afterEach(async () => h?.reset());

/** The control plane as the probe sees it: the queue latency it reports, and the workflows it says are closed. */
interface Plane {
  latencyMs: number;
  closed: Set<string>;
  probes: number;
}

function control(plane: Plane): ControlMock {
  return {
    probeControlPlane: async () => {
      plane.probes++;
      return { queueLatencyMs: plane.latencyMs };
    },
    closedWorkflows: async ({ workflowIds }) => workflowIds.filter((id) => plane.closed.has(id)),
  };
}

const BASE: Partial<AdmissionConfig> = {
  backlogLimit: 3,
  degradedBacklog: 100,
  // Far above the 10 s a test skips at a time: a probe under way while time is skipped measures the skip too.
  degradedLatencyMs: 60_000,
  probeIntervalMs: 10_000,
  calmProbes: 2,
  reconcileIntervalMs: 60_000,
};

async function start(
  config: Partial<AdmissionConfig>,
  probesPerRun?: number,
  workflowId = ADMISSION_WORKFLOW_ID,
): Promise<WorkflowHandle<typeof admission>> {
  return h.env.client.workflow.start(admission, {
    workflowId,
    taskQueue: CONTROL_QUEUE,
    args: [{ config, ...(probesPerRun ? { probesPerRun } : {}) }],
  });
}

const status = (w: WorkflowHandle<typeof admission>): Promise<AdmissionStatus> => w.query(admissionStatusQuery);

/** Asks admission; the refusal (its message and details) when refused, null when admitted. */
async function ask(
  w: WorkflowHandle<typeof admission>,
  workflowId: string,
  priority: number,
  kind: 'job' | 'restore' | 'checkpoint' | 'migrate' = 'job',
): Promise<{ message: string; details: AdmissionRefusal } | null> {
  try {
    await w.executeUpdate(admitUpdate, { args: [{ workflowId, kind, priority }] });
    return null;
  } catch (e) {
    if (e instanceof WorkflowUpdateFailedError && e.cause instanceof ApplicationFailure) {
      expect(e.cause.type).toBe(ADMISSION_REFUSED);
      return { message: e.cause.message, details: e.cause.details?.[0] as AdmissionRefusal };
    }
    throw e;
  }
}

/** Skips time a probe at a time until the status satisfies ok (each probe is a real activity: give it time). */
async function untilStatus(
  w: WorkflowHandle<typeof admission>,
  ok: (s: AdmissionStatus) => boolean,
  what: string,
  maxSteps = 20,
): Promise<AdmissionStatus> {
  let s = await status(w);
  for (let i = 0; i <= maxSteps && !ok(s); i++) {
    // Real time first, so a probe under way finishes before time is skipped again.
    for (let j = 0; j < 20 && !ok(s); j++) {
      await new Promise((r) => setTimeout(r, 100));
      s = await status(w);
    }
    if (!ok(s) && i < maxSteps) await h.env.sleep(10_000);
  }
  if (!ok(s)) throw new Error(`admission never ${what}: ${JSON.stringify(s)}`);
  return s;
}

describe('admission workflow', () => {
  test('past the backlog limit priority 10 is refused at once, saying why and when to retry; 9 and 0 still pass', async () => {
    const plane: Plane = { latencyMs: 5, closed: new Set(), probes: 0 };
    await h.with(control(plane), {}, async () => {
      const w = await start(BASE);
      for (const id of ['job/a', 'job/b', 'job/c']) expect(await ask(w, id, 10)).toBeNull();
      const r = await ask(w, 'job/d', 10);
      expect(r?.details).toMatchObject({ reason: 'backlog', backlog: 3, backlogLimit: 3, priority: 10 });
      expect(r?.message).toMatch(/3 requests wait for placement.*backlog limit of 3.*retry in \d+ s/);
      expect(r?.details.retryAfterS).toBeGreaterThan(0);
      expect(await ask(w, 'job/e', 9)).toBeNull();
      expect(await ask(w, 'job/f', 0)).toBeNull();
      // Checkpoints are checked, not counted: they wait for no node.
      expect(await ask(w, 'checkpoint/x', 5, 'checkpoint')).toBeNull();
      const s = await status(w);
      expect(s.backlog).toBe(5);
      expect(s.backlogByKind).toEqual({ job: 5 });
      expect(s.mode).toBe('Normal');
      // The same request asked again (a retrying client) is admitted: it is counted already.
      expect(await ask(w, 'job/a', 10)).toBeNull();
      // Work that was placed leaves the backlog, and priority 10 passes again below the limit.
      await w.signal(settleSignal, { workflowId: 'job/a', outcome: 'placed' });
      await w.signal(settleSignal, { workflowId: 'job/b', outcome: 'done' });
      await w.signal(settleSignal, { workflowId: 'job/e', outcome: 'done' });
      expect((await status(w)).backlog).toBe(2);
      expect(await ask(w, 'job/g', 10)).toBeNull();
    });
  });

  test('Degraded on latency: refuses priority above 5, keeps 5 and 0 flowing; a backlog past the mark degrades too', async () => {
    const plane: Plane = { latencyMs: 5, closed: new Set(), probes: 0 };
    await h.with(control(plane), {}, async () => {
      const w = await start({ ...BASE, degradedBacklog: 4 });
      await untilStatus(w, (s) => s.lastProbeAt !== null, 'probed');
      expect(await ask(w, 'job/a', 6)).toBeNull();
      plane.latencyMs = 120_000;
      const d = await untilStatus(w, (s) => s.mode === 'Degraded', 'entered Degraded');
      expect(d.why).toMatch(/latency 12\d{4} ms > 60000 ms/);
      const r = await ask(w, 'job/b', 6);
      expect(r?.details).toMatchObject({ reason: 'degraded', mode: 'Degraded', priority: 6 });
      expect(r?.message).toMatch(/Degraded \(control-plane latency .*\).*retry in \d+ s/);
      expect((await ask(w, 'job/c', 10))?.details.reason).toBe('degraded');
      expect(await ask(w, 'job/d', 5)).toBeNull();
      expect(await ask(w, 'job/e', 0)).toBeNull();

      // Backlog alone: past degradedBacklog (4) it is Degraded at once, with no probe needed.
      // A second admission (its own id) for a fresh state, on a calm control plane.
      plane.latencyMs = 5;
      const b = await start({ ...BASE, degradedBacklog: 4, backlogLimit: 100 }, undefined, 'admission-backlog');
      for (const id of ['r/1', 'r/2', 'r/3', 'r/4']) expect(await ask(b, id, 5, 'restore')).toBeNull();
      expect((await status(b)).mode).toBe('Normal');
      expect(await ask(b, 'r/5', 1, 'restore')).toBeNull();
      const s = await status(b);
      expect(s.mode).toBe('Degraded');
      expect(s.why).toBe('backlog 5 > 4');
      expect((await ask(b, 'r/6', 7, 'restore'))?.details.reason).toBe('degraded');
    });
  });

  test('priority 0 is never refused, whatever the load', async () => {
    const plane: Plane = { latencyMs: 600_000, closed: new Set(), probes: 0 };
    await h.with(control(plane), {}, async () => {
      const w = await start({ ...BASE, backlogLimit: 1, degradedBacklog: 2 });
      await untilStatus(w, (s) => s.mode === 'Degraded', 'entered Degraded');
      for (let i = 0; i < 6; i++) expect(await ask(w, `job/critical-${i}`, 0)).toBeNull();
      const s = await status(w);
      expect(s.backlog).toBe(6);
      expect(await ask(w, 'job/p1', 1)).toBeNull(); // 1..5 pass Degraded; the backlog limit is for 10 only
      expect((await ask(w, 'job/p10', 10))?.details.reason).toBe('degraded');
    });
  });

  test('leaves Degraded by itself once load falls, with hysteresis: between the marks it stays Degraded', async () => {
    const plane: Plane = { latencyMs: 90_000, closed: new Set(), probes: 0 };
    await h.with(control(plane), {}, async () => {
      const w = await start(BASE);
      await untilStatus(w, (s) => s.mode === 'Degraded', 'entered Degraded');
      // Below the entry mark (60 s) but above the exit mark (30 s): still Degraded, probe after probe.
      plane.latencyMs = 40_000;
      const before = plane.probes;
      await untilStatus(w, () => plane.probes >= before + 4, 'probed four more times');
      let s = await status(w);
      expect(s.mode).toBe('Degraded');
      expect(s.calmProbes).toBe(0);
      expect((await ask(w, 'job/x', 8))?.details.reason).toBe('degraded');
      // Calm: after calmProbes (2) calm probes in a row it is Normal again, and priority 8 passes.
      plane.latencyMs = 10;
      s = await untilStatus(w, (x) => x.mode === 'Normal', 'left Degraded');
      expect(s.why).toBeNull();
      expect(s.latencyMs).toBeLessThan(30_000);
      expect(await ask(w, 'job/x', 8)).toBeNull();
    });
  });

  test('entries whose settle signal was lost are reconciled against the workflows still open', async () => {
    const plane: Plane = { latencyMs: 5, closed: new Set(['job/gone']), probes: 0 };
    await h.with(control(plane), {}, async () => {
      const w = await start(BASE);
      expect(await ask(w, 'job/gone', 5)).toBeNull();
      expect(await ask(w, 'job/open', 5)).toBeNull();
      const s = await untilStatus(w, (x) => x.backlog === 1, 'reconciled', 30);
      expect(Object.keys(s.backlogByKind)).toEqual(['job']);
      expect(await ask(w, 'job/gone', 10)).toBeNull(); // counted again: it is a new request
    });
  });

  test('continue-as-new keeps its entries, settings and mode', async () => {
    const plane: Plane = { latencyMs: 80_000, closed: new Set(), probes: 0 };
    await h.with(control(plane), {}, async () => {
      const w = await start(BASE, 2);
      const firstRun = (await w.describe()).runId;
      for (const id of ['job/a', 'job/b', 'job/c']) expect(await ask(w, id, 1)).toBeNull();
      await w.executeUpdate(configureUpdate, { args: [{ backlogLimit: 3, calmProbes: 5 }] });
      await untilStatus(w, (s) => s.mode === 'Degraded', 'entered Degraded');
      const latest = h.env.client.workflow.getHandle<typeof admission>(ADMISSION_WORKFLOW_ID);
      for (let i = 0; i < 30 && (await latest.describe()).runId === firstRun; i++) await h.env.sleep(10_000);
      expect((await latest.describe()).runId).not.toBe(firstRun);
      const s = await status(latest);
      expect(s.backlog).toBe(3);
      expect(s.config.calmProbes).toBe(5);
      expect(s.mode).toBe('Degraded');
      expect(s.admitted).toBe(3);
      expect((await ask(latest, 'job/d', 10))?.details).toMatchObject({ reason: 'degraded', backlog: 3 });
      await latest.signal(settleSignal, { workflowId: 'job/a', outcome: 'done' });
      expect((await status(latest)).backlog).toBe(2);
    });
  });

  test('bad settings and requests are refused naming the field', async () => {
    const plane: Plane = { latencyMs: 5, closed: new Set(), probes: 0 };
    await h.with(control(plane), {}, async () => {
      const w = await start(BASE);
      await expect(w.executeUpdate(configureUpdate, { args: [{ backlogLimit: 0 }] })).rejects.toMatchObject({
        cause: { message: expect.stringMatching(/backlogLimit: must be a whole number from 1/) },
      });
      await expect(
        w.executeUpdate(admitUpdate, { args: [{ workflowId: 'job/x', kind: 'job', priority: 11 }] }),
      ).rejects.toMatchObject({ cause: { message: expect.stringMatching(/priority: must be a whole number from 0/) } });
      expect((await status(w)).config.backlogLimit).toBe(3);
    });
  });
});
