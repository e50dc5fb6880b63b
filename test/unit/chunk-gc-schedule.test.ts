import { checkChunkGcSchedule, chunkGcScheduleText, type ChunkGcScheduleInfo } from '../../clients/chunk-gc-schedule';
import { emptyCollection } from '../../common/chunk-gc';
import { InvalidInputError } from '../../common/ids';
import { chunkGcScheduleFromEnv } from '../../workers/chunk-gc-config';

/** What `gc-schedule set` refuses before sending anything, and what `gc-schedule show` prints in each state. */
const info = (more: Partial<ChunkGcScheduleInfo>): ChunkGcScheduleInfo => ({
  scheduleId: 'chunk-gc',
  everyMs: 6 * 3_600_000,
  collection: { minAgeMs: 3_600_000 },
  paused: false,
  nextRunAt: ['2026-11-29T12:00:00.000Z'],
  recent: [{ scheduledAt: '2026-11-29T06:00:00.000Z', workflowId: 'chunk-gc-scheduled-2026-11-29T06:00:00Z' }],
  running: [],
  lastStatus: 'COMPLETED',
  lastResult: { ...emptyCollection({ minAgeMs: 3_600_000 }), referenced: 40, deleted: 3, deletedBytes: 3 << 20 },
  ...more,
});

test('an interval under a minute, or a minimum age out of bounds, is refused naming its flag', () => {
  const refused = (everyMs: number, minAgeMs: number): string => {
    try {
      checkChunkGcSchedule(everyMs, { minAgeMs });
    } catch (e) {
      expect(e).toBeInstanceOf(InvalidInputError);
      return (e as Error).message;
    }
    return 'accepted';
  };
  expect(refused(59_000, 1000)).toMatch(/--every.*at least 1m/);
  expect(refused(60_000, -1)).toMatch(/--min-age/);
  expect(refused(60_000, 0)).toBe('accepted');
});

test('show: the interval and minimum age, the next run, and the last run in each of its states', () => {
  expect(chunkGcScheduleText(null)).toMatch(/^no chunk-gc schedule/);
  const done = chunkGcScheduleText(info({}));
  expect(done).toContain('every 6h, deleting unnamed chunks older than 1h');
  expect(done).toContain('next run   2026-11-29T12:00:00.000Z');
  expect(done).toContain('last run   2026-11-29T06:00:00.000Z: collected, 3 chunks deleted (3.0 MiB), 40 named');
  expect(chunkGcScheduleText(info({ recent: [], lastStatus: null, lastResult: null }))).toContain(
    'last run   none yet',
  );
  expect(
    chunkGcScheduleText(
      info({ running: ['chunk-gc-scheduled-2026-11-29T06:00:00Z'], lastStatus: 'RUNNING', lastResult: null }),
    ),
  ).toContain(': running (chunk-gc-scheduled-2026-11-29T06:00:00Z)');
  expect(chunkGcScheduleText(info({ lastStatus: 'FAILED', lastResult: null }))).toContain(': FAILED (');
  const skipped = {
    ...emptyCollection({ minAgeMs: 3_600_000 }),
    outcome: 'skipped' as const,
    reason: 'uploads in flight (ck-1)',
  };
  expect(chunkGcScheduleText(info({ paused: true, lastResult: skipped }))).toMatch(
    /\(paused\)[\s\S]*skipped \(uploads in flight \(ck-1\)\), 0 chunks deleted/,
  );
});

test("the control worker's setting from its environment: default, configured, off; a bad value names its variable", () => {
  const H = 3_600_000;
  expect(chunkGcScheduleFromEnv({})).toEqual({ kind: 'default', everyMs: 6 * H, input: { minAgeMs: H } });
  expect(chunkGcScheduleFromEnv({ KYBERNATE_CHUNK_GC_EVERY: '', KYBERNATE_CHUNK_GC_MIN_AGE: ' ' })).toMatchObject({
    kind: 'default',
  });
  expect(chunkGcScheduleFromEnv({ KYBERNATE_CHUNK_GC_EVERY: '30m' })).toEqual({
    kind: 'configured',
    everyMs: H / 2,
    input: { minAgeMs: H },
  });
  expect(chunkGcScheduleFromEnv({ KYBERNATE_CHUNK_GC_MIN_AGE: '2h' })).toEqual({
    kind: 'configured',
    everyMs: 6 * H,
    input: { minAgeMs: 2 * H },
  });
  expect(chunkGcScheduleFromEnv({ KYBERNATE_CHUNK_GC_EVERY: 'off' })).toEqual({ kind: 'off' });
  const refused = (env: NodeJS.ProcessEnv): string => {
    try {
      chunkGcScheduleFromEnv(env);
    } catch (e) {
      expect(e).toBeInstanceOf(InvalidInputError);
      return (e as Error).message;
    }
    return 'accepted';
  };
  expect(refused({ KYBERNATE_CHUNK_GC_EVERY: '30s' })).toMatch(
    /^KYBERNATE_CHUNK_GC_EVERY: must be at least 1m, or 'off'/,
  );
  expect(refused({ KYBERNATE_CHUNK_GC_EVERY: 'often' })).toMatch(/^KYBERNATE_CHUNK_GC_EVERY: expected/);
  expect(refused({ KYBERNATE_CHUNK_GC_EVERY: '8d' })).toMatch(/^KYBERNATE_CHUNK_GC_EVERY: must be from 1s to 7d/);
  // Checked even when off: a typo is reported, not left for the day the schedule is turned on.
  expect(refused({ KYBERNATE_CHUNK_GC_EVERY: 'off', KYBERNATE_CHUNK_GC_MIN_AGE: '1y' })).toMatch(
    /^KYBERNATE_CHUNK_GC_MIN_AGE: /,
  );
});
