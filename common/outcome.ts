/**
 * How a workflow that failed ends: it throws an ApplicationFailure (nonRetryable, a stable type) whose details
 * are [its final status, its step history], so the Temporal UI counts it as Failed while callers (clients, parent
 * workflows) still read the status. Pure: safe in workflow code.
 */
import { ApplicationFailure } from '@temporalio/common';
import type { CheckpointStatus } from './checkpoint';
import type { JobStatus } from './job';
import type { MigrateStatus } from './migrate';
import type { RestoreStatus } from './restore';

/**
 * patched() id: a workflow whose final status is a failure throws it (see failedWith) instead of returning it.
 * Histories from before it returned the status and completed; they still replay on this code.
 */
export const PATCH_FAILED_WORKFLOWS_FAIL = 'failed-workflows-fail';

/** The name of the query every workflow answers with its current state. */
export const STATUS_QUERY = 'status';

/** The failure a workflow throws when it ended in a failed state: the status and its history ride along as details. */
export function failedWith<S>(
  message: string,
  type: string,
  status: S,
  history: readonly unknown[],
): ApplicationFailure {
  return ApplicationFailure.create({ message, type, nonRetryable: true, details: [status, history] });
}

/** The status a failed workflow carried in its failure's details (anywhere in the cause chain), or null. */
export function statusFromFailure<S>(err: unknown, is: (x: unknown) => x is S): S | null {
  let cur: unknown = err;
  for (let depth = 0; cur instanceof Error && depth < 10; depth++) {
    if (cur instanceof ApplicationFailure) {
      const first: unknown = cur.details?.[0];
      if (is(first)) return first;
    }
    cur = cur.cause;
  }
  return null;
}

const record = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null;

export const isCheckpointStatus = (x: unknown): x is CheckpointStatus =>
  record(x) &&
  typeof x.checkpointId === 'string' &&
  typeof x.phase === 'string' &&
  Array.isArray(x.history) &&
  'tier' in x;
export const isRestoreStatus = (x: unknown): x is RestoreStatus =>
  record(x) &&
  typeof x.checkpointId === 'string' &&
  typeof x.phase === 'string' &&
  Array.isArray(x.attempts) &&
  Array.isArray(x.excluded);
export const isJobStatus = (x: unknown): x is JobStatus =>
  record(x) &&
  typeof x.jobId === 'string' &&
  typeof x.state === 'string' &&
  Array.isArray(x.events) &&
  Array.isArray(x.runs);
export const isMigrateStatus = (x: unknown): x is MigrateStatus =>
  record(x) &&
  typeof x.jobId === 'string' &&
  typeof x.phase === 'string' &&
  Array.isArray(x.restores) &&
  typeof x.from === 'string';
