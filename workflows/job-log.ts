import { ApplicationFailure, proxyActivities, upsertSearchAttributes } from '@temporalio/workflow';
import { z } from 'zod';
import { ErrorType } from '../common/errors';
import { inputProblem } from '../common/inputs';
import type { ReadRunLogInput, ReadRunLogResult } from '../common/job';
import { nodeQueue } from '../common/queues';
import { SA_JOB, SA_NODE } from '../common/search-attributes';
import { SAFE_ID } from '../common/ids';

/** The node activity that reads a run's log (activities/node, built beside this). */
export interface JobLogActivities {
  readRunLog(input: ReadRunLogInput): Promise<ReadRunLogResult>;
}

export type ReadJobLogInput = { node: string } & ReadRunLogInput;

/** The most a single read returns; the client reads on from nextOffset. */
export const MAX_LOG_READ_BYTES = 1 << 20;

const ReadJobLogSchema = z
  .object({
    node: z.string().regex(SAFE_ID),
    jobId: z.string().regex(SAFE_ID),
    logFile: z.string().min(1),
    offset: z.number().int().min(0),
    maxBytes: z.number().int().min(1).max(MAX_LOG_READ_BYTES).optional(),
  })
  .strict();

/**
 * `logs/<jobId>/<uuid>`: one read of a running job's log on its node, for `kybernate logs`. The log lives on
 * the node until the run ends (then in S3), so only that node's agent can read it. An agent that is restarting
 * is waited for (scheduleToStart), not reported as an error: `logs -f` carries on from the same byte offset
 * once it is back, so no line is lost or doubled. Reading is side-effect free, so a retry is always safe.
 */
export async function readJobLog(input: ReadJobLogInput): Promise<ReadRunLogResult> {
  const invalid = inputProblem(ReadJobLogSchema, input);
  if (invalid) throw ApplicationFailure.nonRetryable(`invalid log read: ${invalid}`, ErrorType.InvalidInput);
  upsertSearchAttributes([
    { key: SA_JOB, value: input.jobId },
    { key: SA_NODE, value: input.node },
  ]);
  const node = proxyActivities<JobLogActivities>({
    taskQueue: nodeQueue(input.node),
    scheduleToStartTimeout: '1h',
    startToCloseTimeout: '30s',
    retry: {
      initialInterval: '1s',
      maximumInterval: '10s',
      maximumAttempts: 30,
      nonRetryableErrorTypes: [ErrorType.InvalidInput],
    },
  });
  const { node: _node, ...read } = input;
  return node.readRunLog.executeWithOptions(
    { summary: `read the log of job ${input.jobId} from byte ${input.offset}` },
    [read],
  );
}
