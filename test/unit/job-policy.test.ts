import { DEFAULT_BACKOFF, type JobCheckpointRecord, type JobSpec } from '../../common/job';
import { backoffDelayMs, MAX_EVENTS, pushEvent, retentionVictims, specProblem } from '../../workflows/job-policy';

const ck = (id: string, over: Partial<JobCheckpointRecord> = {}): JobCheckpointRecord => ({
  checkpointId: id,
  takenAt: '2026-01-01T00:00:00.000Z',
  reason: 'periodic',
  phase: 'Durable',
  healthy: true,
  deleted: false,
  ...over,
});

const spec = (over: Partial<JobSpec> = {}): JobSpec => ({
  jobId: 'train-1',
  command: ['/bin/true'],
  vramBytes: 0,
  limits: {},
  priority: 0,
  tier: 'normal',
  restartPolicy: 'OnFailure',
  maxRestarts: 10,
  backoff: DEFAULT_BACKOFF,
  ...over,
});

describe('job policy', () => {
  test("CrashLoopBackOff delays: Kubernetes' 10 s doubling to a 5 min cap", () => {
    expect([0, 1, 2, 3, 4, 5, 6, 7, 60, 2000].map((k) => backoffDelayMs(DEFAULT_BACKOFF, k) / 1000)).toEqual([
      10, 20, 40, 80, 160, 300, 300, 300, 300, 300,
    ]);
    expect(backoffDelayMs({ initialMs: 1000, capMs: 5000, resetAfterMs: 1 }, 2)).toBe(4000);
  });

  test('events are bounded to the newest ones', () => {
    const events: { at: string; type: string; message: string }[] = [];
    for (let i = 0; i < MAX_EVENTS + 5; i++) pushEvent(events, { at: '', type: 'X', message: String(i) });
    expect(events).toHaveLength(MAX_EVENTS);
    expect(events[0].message).toBe('5');
  });

  test('retention: the oldest periodic ones beyond keep, never the last good one, never one in use', () => {
    const all = [ck('p1'), ck('p2'), ck('p3'), ck('p4'), ck('p5')];
    expect(retentionVictims(all, 2, 'p5', new Set()).map((c) => c.checkpointId)).toEqual(['p1', 'p2', 'p3']);
    expect(retentionVictims(all, 2, 'p1', new Set()).map((c) => c.checkpointId)).toEqual(['p2', 'p3', 'p4']);
    expect(retentionVictims(all, 2, 'p5', new Set(['p2'])).map((c) => c.checkpointId)).toEqual(['p1', 'p3', 'p4']);
    // Deleted, failed and preemption checkpoints do not count against keep and are never picked.
    const mixed = [
      ck('p1', { deleted: true }),
      ck('x', { reason: 'preemption' }),
      ck('f', { phase: 'Failed' }),
      ck('p2'),
      ck('p3'),
    ];
    expect(retentionVictims(mixed, 2, null, new Set())).toEqual([]);
  });

  test('a bad spec names its field', () => {
    expect(specProblem(spec())).toBeNull();
    expect(specProblem(spec({ jobId: 'a/b' }))).toMatch(/^jobId/);
    expect(specProblem(spec({ command: [] }))).toMatch(/^command/);
    expect(specProblem(spec({ maxRestarts: -1 }))).toMatch(/^maxRestarts/);
    expect(specProblem(spec({ timeoutMs: 0 }))).toMatch(/^timeoutMs/);
    expect(specProblem(spec({ keep: 0 }))).toMatch(/^keep/);
    expect(specProblem(spec({ checkpointEveryMs: Number.NaN }))).toMatch(/^checkpointEveryMs/);
    expect(specProblem(spec({ backoff: { initialMs: 0, capMs: 1, resetAfterMs: 1 } }))).toMatch(/^backoff/);
  });
});
