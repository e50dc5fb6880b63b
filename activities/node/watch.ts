import { ApplicationFailure, Context } from '@temporalio/activity';
import { ErrorType } from '../../common/errors';
import type { NodeWatchInput } from '../../common/node';

/** What the agent learns from its watch activities: its liveness watchdog re-registers when none runs for long. */
export interface WatchHooks {
  /** This agent process (its registration's agentRun). */
  agentRun: string;
  started(): void;
  ended(): void;
}

/**
 * The node's liveness watch, run by its agent on `node/<name>`: the registry schedules it with a heartbeat timeout
 * equal to the node timeout, and this activity heartbeats every heartbeatMs until runMs is over (the registry
 * then schedules the next one). Activity heartbeats touch only the server's record of the activity: no history
 * event, no workflow task, nothing on the control worker, however many agents heartbeat.
 */
export function createWatchActivities(hooks: WatchHooks) {
  return {
    async nodeWatch(input: NodeWatchInput): Promise<void> {
      if (input.agentRun !== hooks.agentRun)
        throw ApplicationFailure.nonRetryable(
          `node ${input.node}: watch for agent run ${input.agentRun} reached agent run ${hooks.agentRun}`,
          ErrorType.WatchOtherAgent,
        );
      const ctx = Context.current();
      hooks.started();
      try {
        const end = Date.now() + input.runMs;
        for (;;) {
          // The agent's clock in the details is for operators reading the pending activity; the registry only
          // needs the heartbeat to arrive.
          ctx.heartbeat({ agentRun: hooks.agentRun, at: new Date().toISOString() });
          const left = end - Date.now();
          if (left <= 0) return;
          // Rejects when the activity is cancelled: by the registry (a newer watch), by the server (this watch
          // timed out or its workflow is gone: heartbeat answered "not found"), or by the worker shutting down.
          await ctx.sleep(Math.min(input.heartbeatMs, left));
        }
      } finally {
        hooks.ended();
      }
    },
  };
}

export type WatchActivities = ReturnType<typeof createWatchActivities>;
