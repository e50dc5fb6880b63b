import { proxyActivities } from '@temporalio/workflow';
import type { ControlActivities } from '../activities/control';
import type { JobOpenness } from '../activities/control/job-open';
import { CONTROL_QUEUE } from '../common/queues';
import { describeFailure, failureType } from './failures';

/** Why whether a job is open could not be told: the failure's description, and its type where it has one. */
export interface JobOpenUnanswered {
  unanswered: string;
  type: string | null;
}

/**
 * Whether job <jobId>'s workflow is open, asked of the control worker (activity jobOpen) by a workflow about to act
 * on that job's process from outside the job (a restore, a migration, a stopping checkpoint). Bounded at 10
 * attempts: a question nobody answers fails the asking workflow before it touches anything, instead of holding it.
 */
export async function askJobOpen(jobId: string, summary: string): Promise<JobOpenness | JobOpenUnanswered> {
  const control = proxyActivities<ControlActivities>({
    taskQueue: CONTROL_QUEUE,
    startToCloseTimeout: '30s',
    retry: { maximumInterval: '10s', maximumAttempts: 10 },
  });
  try {
    return await control.jobOpen.executeWithOptions({ summary }, [{ jobId }]);
  } catch (err) {
    return { unanswered: describeFailure(err), type: failureType(err) ?? null };
  }
}
