import { placementWithStart } from './placement-start';
import { ApplicationFailure } from '@temporalio/activity';
import { type Client, WorkflowNotFoundError } from '@temporalio/client';
import type { EvictionAsk, EvictionDecision } from '../../common/eviction-gate';
import { ErrorType } from '../../common/errors';
import {
  DEFAULT_EVICTION_CONFIG,
  type EvictionConfig,
  evictionRates,
  FAILURE_KINDS,
  type FailureKind,
  healthReport,
  type HealthReport,
  talliesOf,
  type ZoneTally,
} from '../../common/health';
import { CONTROL_QUEUE } from '../../common/queues';
import {
  evictionUpdate,
  healthQuery,
  nodeOutcomeSignal,
  type NodeOutcome,
  PLACEMENT_WORKFLOW_ID,
} from '../../workflows/placement';

/** Control activities around node health: outcome reports into the placement workflow, and the eviction rule. */
export function createHealthActivities(client: Client) {
  return {
    /**
     * What a placement on a node came to, for its health score and its zone's breaker. Starts the placement
     * workflow if none runs (its first report may come before any reserve). Idempotent by `id`.
     */
    async reportNodeOutcome(input: NodeOutcome): Promise<void> {
      if (!input.id || !input.node)
        throw ApplicationFailure.nonRetryable('reportNodeOutcome: id and node are required', ErrorType.InvalidInput);
      if (input.kind !== undefined && !FAILURE_KINDS.includes(input.kind as FailureKind))
        throw ApplicationFailure.nonRetryable(
          `reportNodeOutcome: kind must be one of ${FAILURE_KINDS.join(', ')} (got '${String(input.kind)}')`,
          ErrorType.InvalidInput,
        );
      await client.workflow.signalWithStart('placement', {
        workflowId: PLACEMENT_WORKFLOW_ID,
        taskQueue: CONTROL_QUEUE,
        args: [{}],
        signal: nodeOutcomeSignal,
        signalArgs: [input],
        staticSummary: 'VRAM placement: every reservation of GPU memory, one at a time',
      });
    },

    /**
     * The eviction gate's answer (placement workflow, update 'eviction'): granted, or held with why and when to
     * ask again. Safe to retry: asking again only refreshes the job's place in the queue.
     */
    async askEviction(input: EvictionAsk): Promise<EvictionDecision> {
      if (!input.jobId || !input.node)
        throw ApplicationFailure.nonRetryable('askEviction: jobId and node are required', ErrorType.InvalidInput);
      return client.workflow.executeUpdateWithStart(evictionUpdate, {
        args: [input],
        startWorkflowOperation: placementWithStart(),
      });
    },

    /** The placement workflow's health report; null when no placement workflow runs (no health recorded yet). */
    async nodeHealth(): Promise<HealthReport | null> {
      try {
        return healthReport(await client.workflow.getHandle(PLACEMENT_WORKFLOW_ID).query(healthQuery), Date.now());
      } catch (e) {
        if (e instanceof WorkflowNotFoundError) return null;
        throw e;
      }
    },

    /**
     * How many evictions per minute each zone allows, given each node's Ready/Unhealthy state (common/health.ts
     * evictionRates: whole zones dark evict slowly, all zones dark not at all). Pure; an activity so that
     * workflows restarting an Unhealthy node's jobs can ask it.
     */
    async evictionBudget(input: {
      zones?: ZoneTally[];
      /** What workflows sent before zones (a task scheduled then may still be in flight). */
      nodes?: { node: string; zone: string | null; ready: boolean }[];
      config?: Partial<EvictionConfig>;
    }): Promise<ReturnType<typeof evictionRates>> {
      return evictionRates(talliesOf(input), {
        ...DEFAULT_EVICTION_CONFIG,
        ...(input.config ?? {}),
      });
    },
  };
}
