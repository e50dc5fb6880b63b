import { ApplicationFailure, defineQuery, executeChild, setHandler, upsertSearchAttributes } from '@temporalio/workflow';
import type { CheckpointStatus } from '../common/checkpoint';
import { checkpointWorkflowId, CONTROL_QUEUE, restoreWorkflowId } from '../common/queues';
import type { Readiness } from '../common/readiness';
import type { RestoreStatus } from '../common/restore';
import { SA_JOB, SA_NODE, SA_PHASE } from '../common/search-attributes';
import { checkpoint } from './checkpoint';
import { describeFailure, failureType } from './failures';
import { restore } from './restore';
import { ErrorType } from '../common/errors';
import { inputProblem, MigrateInputSchema } from '../common/inputs';

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

export const migrateStatusQuery = defineQuery<MigrateStatus>('status');

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

/**
 * Checkpoint on A, restore on B, as one workflow; if no node takes it, restore it on A again. A restore that
 * reached Running never fails afterwards (see restore's release), so A is restored only when B has no copy.
 */
export async function migrate(input: MigrateRequest): Promise<MigrateStatus> {
  const invalid = inputProblem(MigrateInputSchema, input);
  if (invalid) throw ApplicationFailure.nonRetryable(`invalid migration request: ${invalid}`, ErrorType.InvalidInput);
  const { readiness, ...rest } = input;
  const status: MigrateStatus = { ...rest, phase: 'Checkpointing', checkpoint: null, restores: [], failureReason: null };
  setHandler(migrateStatusQuery, () => status);
  const enter = (p: MigratePhase): void => {
    status.phase = p;
    upsertSearchAttributes([{ key: SA_PHASE, value: p }]);
  };
  upsertSearchAttributes([{ key: SA_JOB, value: input.jobId }, { key: SA_NODE, value: input.from }, { key: SA_PHASE, value: 'Checkpointing' }]);
  status.checkpoint = await executeChild(checkpoint, {
    workflowId: checkpointWorkflowId(input.checkpointId), taskQueue: CONTROL_QUEUE,
    args: [{ checkpointId: input.checkpointId, jobId: input.jobId, node: input.from, leaveRunning: false, reason: 'manual', vramBytes: input.vramBytes }],
  });
  if (status.checkpoint.phase === 'Failed') {
    status.failureReason = `checkpoint failed: ${status.checkpoint.failureReason}`;
    enter('Failed');
    return status; // the checkpoint workflow already resumed the workload on A
  }
  enter('Restoring');
  let failedType: string | null = null;
  const run = async (n: number, req: Parameters<typeof restore>[0]): Promise<RestoreStatus | string> => {
    try {
      const r = await executeChild(restore, { workflowId: restoreWorkflowId(input.checkpointId, n), taskQueue: CONTROL_QUEUE, args: [req] });
      status.restores.push(r);
      return r;
    } catch (err) {
      const cause = err instanceof Error && err.cause ? err.cause : err;
      failedType = failureType(cause);
      return describeFailure(cause);
    }
  };
  const onB = await run(1, { checkpointId: input.checkpointId, prefer: [input.to], exclude: [input.from], placementDeadline: input.placementDeadline ?? '2m', ...(readiness ? { readiness } : {}) });
  if (typeof onB !== 'string') {
    enter('Migrated');
    return status;
  }
  if (failedType === ErrorType.RestoreOutcomeUnknown) {
    // A copy may run where that restore lost its agent: restoring on A as well could make two.
    status.failureReason = `restore elsewhere failed (${onB}); not restored on ${input.from}, since a copy may run where the agent was lost`;
    enter('Failed');
    throw ApplicationFailure.nonRetryable(status.failureReason, ErrorType.MigrationFailed);
  }
  // Nowhere else would take it: the source node still holds the checkpoint, so put the workload back there.
  enter('Compensating');
  const onA = await run(2, { checkpointId: input.checkpointId, node: input.from, placementDeadline: input.placementDeadline ?? '2m', ...(readiness ? { readiness } : {}) });
  if (typeof onA !== 'string') {
    status.failureReason = `restore elsewhere failed (${onB}); restored on ${input.from}`;
    enter('RestoredOnSource');
    return status;
  }
  status.failureReason = `restore elsewhere failed (${onB}); restore on ${input.from} failed too (${onA})`;
  enter('Failed');
  throw ApplicationFailure.nonRetryable(status.failureReason, ErrorType.MigrationFailed);
}
