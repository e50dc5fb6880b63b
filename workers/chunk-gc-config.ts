import type { Client } from '@temporalio/client';
import type { Logger } from 'pino';
import { type ChunkGcInput, DEFAULT_CHUNK_MIN_AGE_MS } from '../common/chunk-gc';
import { checkChunkGcSchedule, putChunkGcSchedule } from '../clients/chunk-gc-schedule';
import { parseSeconds } from '../clients/durations';
import { formatMs } from '../clients/job-format';

export const CHUNK_GC_EVERY_ENV = 'KYBERNATE_CHUNK_GC_EVERY';
export const CHUNK_GC_MIN_AGE_ENV = 'KYBERNATE_CHUNK_GC_MIN_AGE';

/**
 * Chunks are on by default, and retention leaves the chunks of the checkpoints it deletes in the bucket until a
 * collection runs: without a schedule nobody would ever free that space. Every six hours lists the bucket four
 * times a day.
 */
export const DEFAULT_CHUNK_GC_EVERY_MS = 6 * 60 * 60 * 1000;

/**
 * What the control worker does with the chunk-gc schedule when it starts:
 * - `default` (neither variable set): creates it, every 6h with a 1h minimum age, unless there is one, which it
 *   keeps as it is (an operator's `gc-schedule set` wins);
 * - `configured` (KYBERNATE_CHUNK_GC_EVERY and/or _MIN_AGE set): creates it, or sets the one there to these;
 * - `off` (KYBERNATE_CHUNK_GC_EVERY=off): touches nothing, whatever is there stays.
 */
export type ChunkGcScheduleSetting =
  { kind: 'off' } | { kind: 'default' | 'configured'; everyMs: number; input: ChunkGcInput };

/** The setting from the environment; a bad value throws naming its variable, before anything connects. */
export function chunkGcScheduleFromEnv(env: NodeJS.ProcessEnv): ChunkGcScheduleSetting {
  const every = env[CHUNK_GC_EVERY_ENV]?.trim() || undefined;
  const minAge = env[CHUNK_GC_MIN_AGE_ENV]?.trim() || undefined;
  const minAgeMs = minAge === undefined ? DEFAULT_CHUNK_MIN_AGE_MS : parseSeconds(CHUNK_GC_MIN_AGE_ENV, minAge);
  if (every === 'off') return { kind: 'off' };
  const everyMs = every === undefined ? DEFAULT_CHUNK_GC_EVERY_MS : parseSeconds(CHUNK_GC_EVERY_ENV, every);
  const input = { minAgeMs };
  checkChunkGcSchedule(
    everyMs,
    input,
    { every: CHUNK_GC_EVERY_ENV, minAge: CHUNK_GC_MIN_AGE_ENV, off: 'off' },
    `'${every}'`,
  );
  return {
    kind: every === undefined && minAge === undefined ? 'default' : 'configured',
    everyMs,
    input,
  };
}

/**
 * Applies the setting (see ChunkGcScheduleSetting), retried with backoff while Temporal does not answer; runs
 * beside the worker, never holding up its start. What it did is logged.
 */
export async function applyChunkGcSchedule(
  client: Client,
  setting: ChunkGcScheduleSetting,
  logger: Logger,
  attempts = 10,
): Promise<'created' | 'updated' | 'kept' | 'off'> {
  if (setting.kind === 'off') {
    logger.info({ [CHUNK_GC_EVERY_ENV]: 'off' }, 'chunk-gc schedule left as it is');
    return 'off';
  }
  const what = { every: formatMs(setting.everyMs), minAge: formatMs(setting.input.minAgeMs), from: setting.kind };
  for (let attempt = 1; ; attempt++) {
    try {
      const done = await putChunkGcSchedule(
        client,
        setting.everyMs,
        setting.input,
        setting.kind === 'configured' ? 'replace' : 'keep',
      );
      logger.info(
        { ...what, schedule: done },
        done === 'kept'
          ? "chunk-gc schedule already there, kept as it is ('kybernate gc-schedule show')"
          : `chunk-gc schedule ${done}`,
      );
      return done;
    } catch (e) {
      if (attempt >= attempts) throw e;
      logger.warn({ ...what, err: String(e), attempt }, 'chunk-gc schedule not applied yet; trying again');
      await new Promise((r) => setTimeout(r, Math.min(30_000, 1000 * 2 ** attempt)).unref());
    }
  }
}
