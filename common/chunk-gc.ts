/**
 * Pure types of the collection of content-addressed chunks no checkpoint names (activities/control/chunk-gc.ts,
 * workflows/chunk-gc.ts). No I/O: safe in workflow code.
 */

/** Unreferenced chunks younger than this are kept by default: an upload may be about to name them. */
export const DEFAULT_CHUNK_MIN_AGE_MS = 60 * 60 * 1000;
/** One collection at a time: its workflow id. */
export const CHUNK_GC_WORKFLOW_ID = 'chunk-gc';
/** The Temporal Schedule that starts collections (`kybernate gc-schedule`), and the id prefix of what it starts. */
export const CHUNK_GC_SCHEDULE_ID = 'chunk-gc';
export const SCHEDULED_CHUNK_GC_WORKFLOW_ID = 'chunk-gc-scheduled';

export interface ChunkGcInput {
  /** Only chunks older than this (the object store's clock) are deleted. */
  minAgeMs: number;
  /** Count what would be deleted; delete nothing. */
  dryRun?: boolean;
}

export interface ChunkGcResult {
  /** skipped: uploads were in flight (before or during the sweep), so it stopped; `deleted` says how far it got. */
  outcome: 'collected' | 'skipped';
  reason: string | null;
  dryRun: boolean;
  /** metadata.json files read (every checkpoint in the bucket). */
  checkpoints: number;
  /** metadata.json that did not parse: anything in them shaped like a chunk name was kept. */
  unreadableMetadata: string[];
  chunks: number;
  chunkBytes: number;
  /** Chunks some checkpoint names. */
  referenced: number;
  /** Named by none, but younger than minAgeMs: kept. */
  keptRecent: number;
  /** Deleted (with dryRun: would be). */
  deleted: number;
  deletedBytes: number;
}

/** Why an input is refused (naming the field), or null. */
export function chunkGcInputProblem(input: unknown): string | null {
  const i = input as Partial<ChunkGcInput> | null;
  if (!i || typeof i !== 'object') return 'input: expected an object';
  if (typeof i.minAgeMs !== 'number' || !Number.isInteger(i.minAgeMs) || i.minAgeMs < 0)
    return `minAgeMs: expected a whole number of milliseconds >= 0 (got ${JSON.stringify(i.minAgeMs)})`;
  if (i.dryRun !== undefined && typeof i.dryRun !== 'boolean')
    return `dryRun: expected true or false (got ${JSON.stringify(i.dryRun)})`;
  return null;
}

/** A collection's result before it has read anything: what it starts from, and what one that never ran reports. */
export function emptyCollection(input: ChunkGcInput): ChunkGcResult {
  return {
    outcome: 'collected',
    reason: null,
    dryRun: input.dryRun === true,
    checkpoints: 0,
    unreadableMetadata: [],
    chunks: 0,
    chunkBytes: 0,
    referenced: 0,
    keptRecent: 0,
    deleted: 0,
    deletedBytes: 0,
  };
}

/** The result of a collection that did not run (another was running): nothing read, nothing deleted. */
export function skippedCollection(input: ChunkGcInput, reason: string): ChunkGcResult {
  return { ...emptyCollection(input), outcome: 'skipped', reason };
}
