import { WorkflowFailedError } from '@temporalio/client';
import { statusFromFailure } from '../common/outcome';
import { WorkflowFailedWithoutStatusError } from './errors';

/** What resultOf needs of a WorkflowHandle (any workflow's handle is one). */
export interface ResultSource {
  readonly workflowId: string;
  result(): Promise<unknown>;
}

// The guards and the reading of a failure's details are shared with the workflows that put the status there.
export {
  isCheckpointStatus,
  isJobStatus,
  isMigrateStatus,
  isRestoreStatus,
  statusFromFailure,
} from '../common/outcome';

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
