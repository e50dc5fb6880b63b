import type { NodeInventory } from '../../activities/node/inventory';
import type { NodeActivities } from '../../activities/node';
import {
  placementChange,
  REGISTER_BACKOFF_MAX_MS,
  REPORT_AT_LEAST_MS,
  ReportRule,
  reportingAfter,
  WatchWatchdog,
} from '../../workers/liveness';

const GiB = 1024 ** 3;
const inv: NodeInventory = {
  node: 'n',
  zone: 'z1',
  vramSource: 'measured',
  gpus: [{ index: 0, uuid: 'GPU-a', model: 'H100', totalVramBytes: 80 * GiB, freeVramBytes: 70 * GiB }],
  totalVramBytes: 80 * GiB,
  freeVramBytes: 70 * GiB,
  freeDiskBytes: 100 * GiB,
  criuVersion: '4.0',
  reportedAt: '2026-01-01T00:00:00.000Z',
};

describe('inventory reports: only changes placement reads, and at least every few minutes', () => {
  test('small moves of free VRAM or disk are no change; larger ones, GPUs and zone are', () => {
    expect(placementChange(inv, { ...inv, reportedAt: 'later', freeVramBytes: 70 * GiB - 100 * 1024 ** 2 })).toBe(
      false,
    );
    expect(placementChange(inv, { ...inv, freeDiskBytes: 100 * GiB + 512 * 1024 ** 2 })).toBe(false);
    expect(placementChange(inv, { ...inv, freeVramBytes: 60 * GiB })).toBe(true);
    expect(placementChange(inv, { ...inv, freeDiskBytes: 80 * GiB })).toBe(true);
    expect(placementChange(inv, { ...inv, zone: 'z2' })).toBe(true);
    expect(placementChange(inv, { ...inv, gpus: [] })).toBe(true);
    expect(placementChange(inv, { ...inv, gpus: [{ ...inv.gpus[0], freeVramBytes: 10 * GiB }] })).toBe(true);
    expect(placementChange(inv, { ...inv, gpus: [{ ...inv.gpus[0], uuid: 'GPU-b' }] })).toBe(true);
  });

  test('the first report goes, an unchanged one waits REPORT_AT_LEAST_MS, a change goes at once', () => {
    const rule = new ReportRule();
    expect(rule.due(inv, 0)).toBe(true);
    rule.sent(inv, 0);
    expect(rule.due(inv, 30_000)).toBe(false);
    expect(rule.due({ ...inv, freeVramBytes: 10 * GiB }, 30_000)).toBe(true);
    expect(rule.due(inv, REPORT_AT_LEAST_MS)).toBe(true);
  });

  test("after the agent's own work (a restore, a kill) the next read goes out even if it moved less than the margins; work that ends during a read goes with the next", async () => {
    const rule = new ReportRule();
    rule.sent(inv, 0);
    const moved = { ...inv, freeVramBytes: inv.freeVramBytes - 16 * 1024 ** 2 };
    expect(rule.due(moved, 30_000)).toBe(false);
    let restored = 0;
    const acts = reportingAfter(
      {
        cudaRestore: async () => {
          restored++;
          throw new Error('restore failed'); // reported all the same: the driver may hold part of it
        },
        readRunLog: async () => ({ text: '' }),
      } as unknown as NodeActivities,
      () => rule.workDone(),
    );
    await expect(acts.cudaRestore({} as Parameters<NodeActivities['cudaRestore']>[0])).rejects.toThrow(
      'restore failed',
    );
    expect(restored).toBe(1);
    const mark = rule.mark();
    expect(rule.due(moved, 30_000)).toBe(true);
    rule.workDone(); // a kill ends while that read is on its way
    rule.sent(moved, 30_000, mark);
    expect(rule.due(moved, 60_000)).toBe(true);
    rule.sent(moved, 60_000, rule.mark());
    expect(rule.due(moved, 90_000)).toBe(false);
    // A read-only activity is no work.
    await acts.readRunLog({} as Parameters<NodeActivities['readRunLog']>[0]);
    expect(rule.due(moved, 120_000)).toBe(false);
  });
});

describe('the agent registers again only when no watch ran for a while, backing off', () => {
  test('a registration slow to be accepted (a loaded control plane) stretches the wait after it, within the maximum', () => {
    const w = new WatchWatchdog(15_000);
    w.registered(0, 10_000); // 10 s to accept: the watch gets 15 s + 4 x 10 s
    expect(w.mustRegister(54_000)).toBe(false);
    expect(w.mustRegister(55_000)).toBe(true);
    w.registered(60_000, 100); // quick now: the backoff (30 s by now) applies again
    expect(w.mustRegister(60_000 + 29_000)).toBe(false);
    expect(w.mustRegister(60_000 + 30_000)).toBe(true);
    w.registered(100_000, 60_000); // never past the maximum wait
    expect(w.mustRegister(100_000 + REGISTER_BACKOFF_MAX_MS - 1)).toBe(false);
    expect(w.mustRegister(100_000 + REGISTER_BACKOFF_MAX_MS)).toBe(true);
  });

  test('no registration while a watch runs; after a timeout without one, then twice as long each time', () => {
    const w = new WatchWatchdog(15_000);
    w.registered(0);
    expect(w.mustRegister(14_000)).toBe(false);
    expect(w.mustRegister(15_000)).toBe(true);
    w.registered(15_000);
    expect(w.mustRegister(40_000)).toBe(false); // waits 30 s now
    expect(w.mustRegister(45_000)).toBe(true);
    w.registered(45_000);
    w.started();
    expect(w.mustRegister(10 * 60_000)).toBe(false);
    w.ended(600_000);
    // A watch ran: back to one timeout.
    expect(w.mustRegister(600_000 + 14_000)).toBe(false);
    expect(w.mustRegister(600_000 + 15_000)).toBe(true);
    let at = 600_000 + 15_000;
    for (let i = 0; i < 10; i++) {
      w.registered(at);
      at += REGISTER_BACKOFF_MAX_MS;
      expect(w.mustRegister(at)).toBe(true);
    }
  });
});
