import { Context } from '@temporalio/activity';
import type { Client } from '@temporalio/client';

/**
 * The admission workflow's two control-queue activities: a probe that says how long its task waited on the
 * control queue, and the reconciliation of its entries against the workflows still open.
 */
export function createAdmissionActivities(client: Client) {
  return {
    /**
     * A trivial activity: its schedule-to-start time is how long the control worker's queue made it wait. The
     * workflow also times the whole round trip (it includes the workflow task that follows), and takes the larger.
     */
    async probeControlPlane(): Promise<{ queueLatencyMs: number }> {
      const info = Context.current().info;
      return { queueLatencyMs: Math.max(0, Date.now() - info.currentAttemptScheduledTimestampMs) };
    },

    /**
     * Of the given workflow ids, those with no open workflow: their job or restore ended (or was never started)
     * without the settle signal reaching admission. One visibility list of open jobs and restores, not one
     * look-up per entry, so the cost does not grow with the backlog times the ids.
     */
    async closedWorkflows(input: { workflowIds: string[] }): Promise<string[]> {
      if (input.workflowIds.length === 0) return [];
      const open = new Set<string>();
      for await (const wf of client.workflow.list({
        query: `ExecutionStatus = 'Running' AND WorkflowType IN ('job', 'restore')`,
      })) {
        open.add(wf.workflowId);
      }
      return input.workflowIds.filter((id) => !open.has(id));
    },
  };
}
