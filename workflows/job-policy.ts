/**
 * The job workflow's pure rules (no I/O, no clocks): CrashLoopBackOff delays, the bounded event list, and
 * which periodic checkpoints retention deletes. Kept apart so they read, and can be tested, on their own.
 */
import { SAFE_ID } from '../common/ids';
import type { BackoffPolicy, JobCheckpointRecord, JobEvent, JobSpec } from '../common/job';

/** Events kept in JobStatus: the newest ones, like kubectl's. */
export const MAX_EVENTS = 100;

/** Kubernetes' CrashLoopBackOff: initialMs * 2^k, capped (10, 20, 40, 80, 160, 300, 300... s by default). */
export function backoffDelayMs(policy: BackoffPolicy, k: number): number {
  // 2^k overflows to Infinity for a large k, which Math.min caps as it should.
  return Math.min(policy.initialMs * 2 ** Math.max(0, k), policy.capMs);
}

export function pushEvent(events: JobEvent[], e: JobEvent): void {
  events.push(e);
  if (events.length > MAX_EVENTS) events.splice(0, events.length - MAX_EVENTS);
}

/**
 * Periodic checkpoints to delete once one more became Durable: the oldest beyond `keep` among the periodic
 * ones still held (Durable or waiting for upload), never the last good one, never one a restore uses.
 */
export function retentionVictims(
  checkpoints: readonly JobCheckpointRecord[],
  keep: number,
  lastGood: string | null,
  inUse: ReadonlySet<string>,
): JobCheckpointRecord[] {
  const held = checkpoints.filter(
    (c) => c.reason === 'periodic' && !c.deleted && (c.phase === 'Durable' || c.phase === 'PendingUpload'),
  );
  const excess = held.length - keep;
  if (excess <= 0) return [];
  return held.filter((c) => c.checkpointId !== lastGood && !inUse.has(c.checkpointId)).slice(0, excess);
}

/** What is wrong with a spec, naming the field; null when it can run. Checked before anything is touched. */
export function specProblem(spec: JobSpec): string | null {
  const positive = (v: number | undefined): boolean => v === undefined || (Number.isFinite(v) && v > 0);
  if (!spec || typeof spec !== 'object') return 'spec: missing';
  if (typeof spec.jobId !== 'string' || !SAFE_ID.test(spec.jobId))
    return `jobId: expected letters, digits, '.', '_' or '-' (got ${JSON.stringify(spec.jobId)})`;
  if (
    !Array.isArray(spec.command) ||
    spec.command.length === 0 ||
    spec.command.some((a) => typeof a !== 'string') ||
    spec.command[0] === ''
  )
    return 'command: must be a non-empty list of strings';
  if (!Number.isFinite(spec.vramBytes) || spec.vramBytes < 0) return `vramBytes: must be >= 0 (got ${spec.vramBytes})`;
  if (!Number.isInteger(spec.maxRestarts) || spec.maxRestarts < 0)
    return `maxRestarts: must be an integer >= 0 (got ${spec.maxRestarts})`;
  if (!['Always', 'OnFailure', 'Never'].includes(spec.restartPolicy))
    return `restartPolicy: must be Always, OnFailure or Never (got ${spec.restartPolicy})`;
  if (
    !spec.backoff ||
    !positive(spec.backoff.initialMs) ||
    !positive(spec.backoff.capMs) ||
    !positive(spec.backoff.resetAfterMs)
  )
    return 'backoff: initialMs, capMs and resetAfterMs must be > 0';
  if (!positive(spec.timeoutMs)) return `timeoutMs: must be > 0 (got ${spec.timeoutMs})`;
  if (!positive(spec.checkpointEveryMs)) return `checkpointEveryMs: must be > 0 (got ${spec.checkpointEveryMs})`;
  if (spec.keep !== undefined && (!Number.isInteger(spec.keep) || spec.keep < 1))
    return `keep: must be an integer >= 1 (got ${spec.keep})`;
  if (!positive(spec.evictAfterMs)) return `evictAfterMs: must be > 0 (got ${spec.evictAfterMs})`;
  return null;
}
