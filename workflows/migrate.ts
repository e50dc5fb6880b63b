import {
  ApplicationFailure,
  defineQuery,
  executeChild,
  patched,
  setCurrentDetails,
  setHandler,
  upsertSearchAttributes,
} from '@temporalio/workflow';
import type { MigratePhase, MigrateRequest, MigrateStatus } from '../common/migrate';
import {
  failedWith,
  isCheckpointStatus,
  PATCH_FAILED_WORKFLOWS_FAIL,
  statusFromFailure,
  STATUS_QUERY,
} from '../common/outcome';
import { checkpointWorkflowId, CONTROL_QUEUE, restoreWorkflowId } from '../common/queues';
import type { RestoreStatus } from '../common/restore';
import { SA_JOB, SA_NODE, SA_PHASE } from '../common/search-attributes';
import { checkpoint } from './checkpoint';
import { describeFailure, failureType } from './failures';
import { askJobOpen } from './job-open';
import { restore } from './restore';
import { ErrorType } from '../common/errors';
import { inputProblem, MigrateInputSchema } from '../common/inputs';

export type { MigratePhase, MigrateRequest, MigrateStatus } from '../common/migrate';

export const migrateStatusQuery = defineQuery<MigrateStatus>(STATUS_QUERY);

/**
 * Histories from before it checkpointed the process without asking whether a job workflow runs it. With it, a
 * job still open is refused before anything is touched: moved from outside, the job would see its run end and
 * start it again beside the moved copy (its own migrate update moves it, and `kybernate migrate` uses that).
 */
export const PATCH_MIGRATE_REFUSE_OPEN_JOB = 'migrate-refuse-open-job';

/**
 * Checkpoint on A, restore on B, as one workflow; if no node takes it, restore it on A again. A restore that
 * reached Running never fails afterwards (see restore's release), so A is restored only when B has no copy.
 */
export async function migrate(input: MigrateRequest): Promise<MigrateStatus> {
  const invalid = inputProblem(MigrateInputSchema, input);
  if (invalid) throw ApplicationFailure.nonRetryable(`invalid migration request: ${invalid}`, ErrorType.InvalidInput);
  const { readiness, ...rest } = input;
  const status: MigrateStatus = {
    ...rest,
    phase: 'Checkpointing',
    checkpoint: null,
    restores: [],
    failureReason: null,
  };
  setHandler(migrateStatusQuery, () => status);
  const enter = (p: MigratePhase, details?: string): void => {
    status.phase = p;
    upsertSearchAttributes([{ key: SA_PHASE, value: p }]);
    setCurrentDetails(`phase: ${p}${details ? `, ${details}` : ''}`);
  };
  /** A migration that failed fails its workflow, its status in the failure (older histories returned it). */
  const failed = (reason: string, type: string = ErrorType.MigrationFailed): MigrateStatus => {
    status.failureReason = reason;
    enter('Failed', reason);
    if (patched(PATCH_FAILED_WORKFLOWS_FAIL)) throw failedWith(reason, type, status, status.checkpoint?.history ?? []);
    return status;
  };
  upsertSearchAttributes([
    { key: SA_JOB, value: input.jobId },
    { key: SA_NODE, value: input.from },
    { key: SA_PHASE, value: 'Checkpointing' },
  ]);
  setCurrentDetails(`phase: Checkpointing ${input.jobId} on ${input.from}`);
  if (patched(PATCH_MIGRATE_REFUSE_OPEN_JOB)) {
    const job = await askJobOpen(input.jobId, `is job ${input.jobId} still open`);
    if ('unanswered' in job)
      return failed(
        `could not tell whether job ${input.jobId} is still open, so nothing was touched: ${job.unanswered}`,
      );
    if (job.open)
      return failed(
        `job ${input.jobId} is run by its job workflow (state ${job.state ?? 'unknown'}): moved from outside it would ` +
          `run twice; move it with 'kybernate migrate ${input.jobId} --to ${input.to}', which asks the job workflow`,
        ErrorType.JobOpen,
      );
  }
  // A checkpoint that failed fails its workflow (its status in the failure); older ones returned it.
  status.checkpoint = await executeChild(checkpoint, {
    workflowId: checkpointWorkflowId(input.checkpointId),
    taskQueue: CONTROL_QUEUE,
    args: [
      {
        checkpointId: input.checkpointId,
        jobId: input.jobId,
        node: input.from,
        leaveRunning: false,
        reason: 'manual',
        vramBytes: input.vramBytes,
      },
    ],
    staticSummary: `Checkpoint ${input.jobId} on ${input.from} (migration to ${input.to})`,
  }).catch((err: unknown) => {
    const s = statusFromFailure(err, isCheckpointStatus);
    if (s === null) throw err;
    return s;
  });
  if (status.checkpoint.phase === 'Failed') {
    return failed(`checkpoint failed: ${status.checkpoint.failureReason}`); // the checkpoint workflow already resumed the workload on A
  }
  enter('Restoring', `to ${input.to}`);
  let failedType: string | null = null;
  const run = async (n: number, req: Parameters<typeof restore>[0]): Promise<RestoreStatus | string> => {
    try {
      const r = await executeChild(restore, {
        workflowId: restoreWorkflowId(input.checkpointId, n),
        taskQueue: CONTROL_QUEUE,
        args: [req],
        staticSummary: `Restore ${input.checkpointId} of ${input.jobId} on ${req.node ?? req.prefer?.join(', ') ?? 'any node'} (migration ${n === 1 ? 'target' : 'back to the source'})`,
      });
      status.restores.push(r);
      return r;
    } catch (err) {
      const cause = err instanceof Error && err.cause ? err.cause : err;
      failedType = failureType(cause);
      return describeFailure(cause);
    }
  };
  const onB = await run(1, {
    checkpointId: input.checkpointId,
    prefer: [input.to],
    exclude: [input.from],
    placementDeadline: input.placementDeadline ?? '2m',
    ...(readiness ? { readiness } : {}),
  });
  if (typeof onB !== 'string') {
    enter('Migrated');
    return status;
  }
  if (failedType === ErrorType.RestoreOutcomeUnknown) {
    // A copy may run where that restore lost its agent: restoring on A as well could make two.
    status.failureReason = `restore elsewhere failed (${onB}); not restored on ${input.from}, since a copy may run where the agent was lost`;
    enter('Failed', status.failureReason);
    throw ApplicationFailure.nonRetryable(status.failureReason, ErrorType.MigrationFailed);
  }
  // Nowhere else would take it: the source node still holds the checkpoint, so put the workload back there.
  enter('Compensating', `restoring on ${input.from} again`);
  const onA = await run(2, {
    checkpointId: input.checkpointId,
    node: input.from,
    placementDeadline: input.placementDeadline ?? '2m',
    ...(readiness ? { readiness } : {}),
  });
  if (typeof onA !== 'string') {
    status.failureReason = `restore elsewhere failed (${onB}); restored on ${input.from}`;
    enter('RestoredOnSource');
    return status;
  }
  status.failureReason = `restore elsewhere failed (${onB}); restore on ${input.from} failed too (${onA})`;
  enter('Failed', status.failureReason);
  throw ApplicationFailure.nonRetryable(status.failureReason, ErrorType.MigrationFailed);
}
