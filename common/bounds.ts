/**
 * Bounds on sizes and durations, checked by the CLI and the API before anything is touched, and again by the
 * workflows' input schemas (common/inputs.ts) so that a crafted input gets the same answer. Pure: workflow-safe.
 */

const TiB = 1024 ** 4;

/**
 * The most VRAM one workload may declare, and one node may report: 16 TiB, i.e. 16 GPUs of 1 TiB each. The
 * largest nodes today hold about 1.1 TB (8 x H200 of 141 GB), so this never turns a real node away, while a
 * typo such as 1000TiB is refused instead of producing a checkpoint that no node can ever restore.
 */
export const MAX_VRAM_BYTES = 16 * TiB;

/** Durations (placement deadline, report interval): at least a second, at most a week. */
export const MIN_DURATION_MS = 1000;
export const MAX_DURATION_MS = 7 * 24 * 3600 * 1000;

const DURATION_UNITS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;
const DURATION = /^([0-9]{1,15})(ms|s|m|h|d)$/;

/** What is wrong with a byte count, or null when it is a whole number from 0 to max. */
export function bytesProblem(n: number, max: number = MAX_VRAM_BYTES): string | null {
  if (!Number.isFinite(n)) return `must be a finite number of bytes (got ${n})`;
  if (!Number.isInteger(n)) return `must be a whole number of bytes (got ${n})`;
  if (n < 0) return `must not be negative (got ${n})`;
  if (n > max) return `must be at most ${max} bytes (${max / TiB} TiB) (got ${n})`;
  return null;
}

/** Milliseconds of "90s", "10m", "2h", "1d", "1500ms", or null when it is not written that way. */
export function durationMs(text: string): number | null {
  const m = DURATION.exec(text);
  return m ? Number(m[1]) * DURATION_UNITS[m[2] as keyof typeof DURATION_UNITS] : null;
}

/** What is wrong with a duration, or null when it is well formed and from 1s to 7d. */
export function durationProblem(text: string): string | null {
  const ms = durationMs(text);
  if (ms === null) return `expected a duration such as 90s, 10m, 2h or 1d (got '${text}')`;
  if (ms < MIN_DURATION_MS || ms > MAX_DURATION_MS) return `must be from 1s to 7d (got '${text}')`;
  return null;
}
