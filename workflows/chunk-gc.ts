import { ApplicationFailure, proxyActivities, setCurrentDetails } from '@temporalio/workflow';
import type { ControlActivities } from '../activities/control';
import { chunkGcInputProblem, type ChunkGcInput, type ChunkGcResult } from '../common/chunk-gc';
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
