import { WorkflowFailedError } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import type { CheckpointStatus } from '../common/checkpoint';
import type { JobStatus } from '../common/job';
import type { RestoreStatus } from '../common/restore';
import type { MigrateStatus } from '../workflows/migrate';
import { WorkflowFailedWithoutStatusError } from './errors';

/** What resultOf needs of a WorkflowHandle (any workflow's handle is one). */
export interface ResultSource {
  readonly workflowId: string;
  result(): Promise<unknown>;
}

const isRecord = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null;

/** Guards for the statuses that ride in a failed workflow's ApplicationFailure details (details[0]). */
export const isCheckpointStatus = (x: unknown): x is CheckpointStatus =>
  isRecord(x) && typeof x.checkpointId === 'string' && typeof x.phase === 'string' && Array.isArray(x.history) && 'tier' in x;
export const isRestoreStatus = (x: unknown): x is RestoreStatus =>
  isRecord(x) && typeof x.checkpointId === 'string' && typeof x.phase === 'string' && Array.isArray(x.attempts) && Array.isArray(x.excluded);
export const isJobStatus = (x: unknown): x is JobStatus =>
  isRecord(x) && typeof x.jobId === 'string' && typeof x.state === 'string' && Array.isArray(x.events) && Array.isArray(x.runs);
export const isMigrateStatus = (x: unknown): x is MigrateStatus =>
  isRecord(x) && typeof x.jobId === 'string' && typeof x.phase === 'string' && Array.isArray(x.restores) && typeof x.from === 'string';

/** The status a failed workflow carried as its ApplicationFailure's first detail (anywhere in the cause chain), or null. */
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

/**
 * The one place the library reads a workflow's outcome. A workflow ends with its status either way: returned
 * when it completed, or (workflows that *fail* when their operation failed, so the UI shows them Failed) as its
 * failure's first detail. Both come back as the status; a failure without one is a WorkflowFailedWithoutStatusError
 * naming its whole cause chain. Other errors (Temporal unreachable, not found) pass through.
 */
export async function resultOf<S>(handle: ResultSource, is: (x: unknown) => x is S): Promise<S> {
  try {
    // A completed workflow's result is its status by the workflow's own type; `is` guards only failure details.
    return (await handle.result()) as S;
  } catch (e) {
    if (!(e instanceof WorkflowFailedError)) throw e;
    const status = statusFromFailure(e, is);
    if (status !== null) return status;
    throw new WorkflowFailedWithoutStatusError(handle.workflowId, e);
  }
}
