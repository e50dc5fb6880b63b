import type { CheckpointStatus } from '../common/checkpoint';
import type { JobStatus } from '../common/job';
import type { MigrateStatus } from '../common/migrate';
import { isCheckpointStatus, isJobStatus, isMigrateStatus, isRestoreStatus } from '../common/outcome';
import type { RestoreStatus } from '../common/restore';
import { type ResultSource, resultOf } from './result';

/** How a workflow's final status is recognised, by kind. */
const GUARDS = {
  checkpoint: isCheckpointStatus,
  restore: isRestoreStatus,
  job: isJobStatus,
  migrate: isMigrateStatus,
} as const;
interface Statuses {
  checkpoint: CheckpointStatus;
  restore: RestoreStatus;
  job: JobStatus;
  migrate: MigrateStatus;
}

/**
 * A finished workflow's final status, whether it completed (its result) or failed in a failed state (the status
 * it carried in its failure's details: common/outcome.ts), read the one way the library reads outcomes
 * (resultOf); a failure without a status is a WorkflowFailedWithoutStatusError.
 */
export async function finalStatus<K extends keyof Statuses>(kind: K, handle: ResultSource): Promise<Statuses[K]> {
  return resultOf(handle, GUARDS[kind] as (x: unknown) => x is Statuses[K]);
}
