import { ApplicationFailure, Context } from '@temporalio/activity';
import { type Client, WorkflowNotFoundError, WorkflowUpdateFailedError } from '@temporalio/client';
import { ErrorType } from '../../common/errors';
import { JOB_PREEMPT_UPDATE, type JobStatus, jobWorkflowId, type PreemptResult } from '../../common/job';
import type { NodeRecord } from '../../common/node';
import { nodeWorkflowId } from '../../common/queues';
import type { RunningJob } from '../../common/sweep';

/** How often preemptJob heartbeats while the job's checkpoint runs (its heartbeat timeout is a few times this). */
const PREEMPT_HEARTBEAT_MS = 5_000;

/** Control activities of the preemption sweep (workflows/sweep.ts). */
export function createSweepActivities(client: Client) {
  return {
    /**
     * Every job whose workflow runs and whose status says Running, with its priority, tier, age, node and the
     * zone that node reported. Jobs that did not answer their status query are listed in `unanswered` (never
     * guessed at: a job we cannot see is not a victim).
     */
    async runningJobs(): Promise<{ jobs: RunningJob[]; unanswered: string[] }> {
      const jobs: RunningJob[] = [];
      const unanswered: string[] = [];
      const zones = new Map<string, string | null>();
      const zoneOf = async (node: string): Promise<string | null> => {
        if (!zones.has(node)) {
          const rec = await client.workflow
            .getHandle(nodeWorkflowId(node))
            .query<NodeRecord>('status')
            .catch(() => null);
          zones.set(node, rec?.inventory?.zone ?? null);
        }
        return zones.get(node) ?? null;
      };
      for await (const wf of client.workflow.list({
        query: `WorkflowType = 'job' AND ExecutionStatus = 'Running'`,
      })) {
        Context.current().heartbeat();
        let s: JobStatus;
        try {
          s = await client.workflow.getHandle(wf.workflowId).query<JobStatus>('status');
        } catch {
          unanswered.push(wf.workflowId.replace(/^job\//, ''));
          continue;
        }
        if (s.state !== 'Running' || !s.node) continue;
        jobs.push({
          jobId: s.jobId,
          priority: s.spec.priority,
          tier: s.spec.tier,
          createdAt: s.createdAt,
          node: s.node,
          zone: await zoneOf(s.node),
        });
      }
      return { jobs, unanswered };
    },

    /**
     * A job's state and why, asked after a preemption whose outcome is unknown (a timeout is "unknown": the
     * sweep finds out what became of the job before it records anything).
     */
    async jobState(input: { jobId: string }): Promise<{ state: string; reason: string | null }> {
      try {
        const s = await client.workflow.getHandle(jobWorkflowId(input.jobId)).query<JobStatus>('status');
        return { state: s.state, reason: s.reason };
      } catch (e) {
        if (e instanceof WorkflowNotFoundError)
          throw ApplicationFailure.nonRetryable(`no job '${input.jobId}'`, ErrorType.PreemptRefused);
        throw e;
      }
    },

    /**
     * The job workflow's preempt update (checkpoint, stop, requeue; the job resumes from that checkpoint when
     * placement allows). updateId makes a retried attempt attach to the same update instead of preempting
     * twice. A refusal (not Running, already being preempted) or a gone job fails for good (PreemptRefused).
     */
    async preemptJob(input: { jobId: string; updateId: string }): Promise<PreemptResult> {
      const ctx = Context.current();
      const beat = setInterval(() => ctx.heartbeat(), PREEMPT_HEARTBEAT_MS);
      try {
        return await client.workflow
          .getHandle(jobWorkflowId(input.jobId))
          .executeUpdate<PreemptResult, []>(JOB_PREEMPT_UPDATE, { updateId: input.updateId });
      } catch (e) {
        if (e instanceof WorkflowNotFoundError)
          throw ApplicationFailure.nonRetryable(`no running job '${input.jobId}'`, ErrorType.PreemptRefused);
        if (e instanceof WorkflowUpdateFailedError)
          throw ApplicationFailure.nonRetryable(
            `job ${input.jobId} refused the preemption: ${e.cause?.message ?? e.message}`,
            ErrorType.PreemptRefused,
          );
        throw e;
      } finally {
        clearInterval(beat);
      }
    },
  };
}
