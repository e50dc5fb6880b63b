/** Pure types of the migrate workflow, shared with clients. No I/O: safe in workflow code. */
import type { CheckpointStatus } from './checkpoint';
import type { Readiness } from './readiness';
import type { RestoreStatus } from './restore';

export type MigratePhase = 'Checkpointing' | 'Restoring' | 'Compensating' | 'Migrated' | 'RestoredOnSource' | 'Failed';

export interface MigrateStatus {
  jobId: string;
  from: string;
  to: string;
  phase: MigratePhase;
  checkpointId: string;
  checkpoint: CheckpointStatus | null;
  restores: RestoreStatus[];
  failureReason: string | null;
}

export interface MigrateRequest {
  jobId: string;
  from: string;
  to: string;
  checkpointId: string;
  vramBytes?: number;
  placementDeadline?: string;
  /** Passed to each restore: the workload counts as Running on a node only once this probe passes. */
  readiness?: Readiness;
}
