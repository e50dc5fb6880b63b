import type { JobInput, JobStatus } from '../common/job';

/**
 * SCAFFOLD ONLY (replaced by the job workflow before this lands): the typed signature clients start by
 * function reference.
 */
export async function job(input: JobInput): Promise<JobStatus> {
  throw new Error(`job workflow for ${input.spec.jobId} is not built yet`);
}
