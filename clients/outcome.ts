import type { CheckpointStatus } from '../common/checkpoint';
import type { JobStatus } from '../common/job';
import type { MigrateStatus } from '../common/migrate';
import { isCheckpointStatus, isJobStatus, isMigrateStatus, isRestoreStatus, statusFromFailure } from '../common/outcome';
import type { RestoreStatus } from '../common/restore';

/** How a workflow's final status is recognised, by kind. */
const GUARDS = {
  checkpoint: isCheckpointStatus,
  restore: isRestoreStatus,
  job: isJobStatus,
  migrate: isMigrateStatus,
} as const;
interface Statuses { checkpoint: CheckpointStatus; restore: RestoreStatus; job: JobStatus; migrate: MigrateStatus }

/**
 * A finished workflow's final status, whether it completed (its result) or failed in a failed state (the status
 * it carried in its failure's details: common/outcome.ts). Any other failure (invalid input, terminated, a bug)
 * is thrown as it came.
 */
export async function finalStatus<K extends keyof Statuses>(kind: K, handle: { result(): Promise<unknown> }): Promise<Statuses[K]> {
  const is = GUARDS[kind] as (x: unknown) => x is Statuses[K];
  try {
    const r = await handle.result();
    if (is(r)) return r;
    throw new Error(`the ${kind} workflow returned no ${kind} status`);
  } catch (e) {
    const s = statusFromFailure(e, is);
    if (s === null) throw e;
    return s;
  }
}
