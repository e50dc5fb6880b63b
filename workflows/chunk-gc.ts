import {
  ApplicationFailure,
  ChildWorkflowCancellationType,
  executeChild,
  ParentClosePolicy,
  proxyActivities,
  setCurrentDetails,
} from '@temporalio/workflow';
import { WorkflowExecutionAlreadyStartedError } from '@temporalio/common';
import type { ControlActivities } from '../activities/control';
import {
  CHUNK_GC_WORKFLOW_ID,
  chunkGcInputProblem,
  type ChunkGcInput,
  type ChunkGcResult,
  skippedCollection,
} from '../common/chunk-gc';
import { ErrorType } from '../common/errors';
import { CONTROL_QUEUE } from '../common/queues';

/**
 * One collection of unreferenced chunks (`kybernate gc`): Collecting (the control activity collectChunks,
 * retried while S3 is away) -> Done with its counts. Started under one workflow id, so two never overlap.
 */
export async function chunkGc(input: ChunkGcInput): Promise<ChunkGcResult> {
  const invalid = chunkGcInputProblem(input);
  if (invalid) throw ApplicationFailure.nonRetryable(`invalid collection: ${invalid}`, ErrorType.InvalidInput);
  const control = proxyActivities<ControlActivities>({
    taskQueue: CONTROL_QUEUE,
    startToCloseTimeout: '30m',
    heartbeatTimeout: '1m',
    // S3 away: tried again with backoff; past this the operator runs it again.
    scheduleToCloseTimeout: '2h',
    retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '1m' },
  });
  setCurrentDetails('phase: Collecting');
  const result = await control.collectChunks(input);
  setCurrentDetails(`phase: Done; ${result.outcome}: ${result.deleted} chunks deleted`);
  return result;
}

/**
 * A collection started by the chunk-gc schedule (`kybernate gc-schedule set`): Starting -> the collection itself
 * as the child workflow chunk-gc, the id `kybernate gc` uses too -> Done with its counts. So a scheduled and a
 * manual collection never run at once: two collectors would each delete the one gc lock the other relies on
 * (activities/chunk-store.ts). With one running already, this one is skipped and says so.
 */
export async function scheduledChunkGc(input: ChunkGcInput): Promise<ChunkGcResult> {
  const invalid = chunkGcInputProblem(input);
  if (invalid) throw ApplicationFailure.nonRetryable(`invalid collection: ${invalid}`, ErrorType.InvalidInput);
  setCurrentDetails('phase: Starting');
  try {
    const result = await executeChild(chunkGc, {
      workflowId: CHUNK_GC_WORKFLOW_ID,
      taskQueue: CONTROL_QUEUE,
      args: [input],
      // A collection stopped halfway holds the gc lock until its TTL: it runs to its end whatever this one does.
      cancellationType: ChildWorkflowCancellationType.ABANDON,
      parentClosePolicy: ParentClosePolicy.ABANDON,
      staticSummary: 'Collection of unreferenced chunks, started by the chunk-gc schedule',
    });
    setCurrentDetails(`phase: Done; ${result.outcome}: ${result.deleted} chunks deleted`);
    return result;
  } catch (e) {
    if (!(e instanceof WorkflowExecutionAlreadyStartedError)) throw e;
    const skipped = skippedCollection(input, `a collection is running already (workflow ${CHUNK_GC_WORKFLOW_ID})`);
    setCurrentDetails(`phase: Done; skipped: ${skipped.reason}`);
    return skipped;
  }
}
