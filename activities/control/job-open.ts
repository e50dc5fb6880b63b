import { type Client, WorkflowNotFoundError } from '@temporalio/client';
import { type JobStatus, jobWorkflowId } from '../../common/job';

/** Whether job <jobId>'s workflow still runs; a job never started, or one that ended, is not open. */
export async function jobWorkflowOpen(client: Client, jobId: string): Promise<boolean> {
  try {
    return (await client.workflow.getHandle(jobWorkflowId(jobId)).describe()).status.name === 'RUNNING';
  } catch (e) {
    if (e instanceof WorkflowNotFoundError) return false;
    throw e;
  }
}

/** A job's workflow: open or not, and the state it reports (null when closed, or when its status went unanswered). */
export interface JobOpenness {
  open: boolean;
  state: string | null;
}

/** Control activities that ask about a job from outside its workflow. */
export function createJobOpenActivities(client: Client) {
  return {
    /**
     * Asked by a restore started outside any job or migration: a checkpoint of a job whose workflow still runs,
     * restored beside it, would run that job twice. The state is for the refusal's message only.
     */
    async jobOpen(input: { jobId: string }): Promise<JobOpenness> {
      if (!(await jobWorkflowOpen(client, input.jobId))) return { open: false, state: null };
      const s = await client.workflow
        .getHandle(jobWorkflowId(input.jobId))
        .query<JobStatus>('status')
        .catch(() => null);
      return { open: true, state: s?.state ?? null };
    },
  };
}
