import { type Client, WorkflowNotFoundError } from '@temporalio/client';
import { InvalidInputError } from '../common/ids';
import { type HealthConfigPatch, HealthConfigPatchSchema, healthReport, type HealthReport } from '../common/health';
import { CONTROL_QUEUE } from '../common/queues';
import { configureHealthSignal, healthQuery, PLACEMENT_WORKFLOW_ID } from '../workflows/placement';

/**
 * Every node the placement workflow has heard of, with its score and state (Healthy | Quarantined), and every
 * zone's breaker (Closed | Open | HalfOpen) with its window counts, computed at this machine's clock; null when
 * no placement workflow runs (nothing placed or reported yet: every node Healthy, every zone Closed).
 */
export async function readHealth(client: Client, now = Date.now()): Promise<HealthReport | null> {
  try {
    return healthReport(await client.workflow.getHandle(PLACEMENT_WORKFLOW_ID).query(healthQuery), now);
  } catch (e) {
    if (e instanceof WorkflowNotFoundError) return null;
    throw e;
  }
}

/** Changes the health rules from now on (half-life, thresholds, zone throttle); a bad field is named, nothing sent. */
export async function configureHealth(client: Client, patch: unknown): Promise<void> {
  const parsed = HealthConfigPatchSchema.safeParse(patch);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new InvalidInputError(`health.${issue.path.join('.') || '(root)'}`, issue.message);
  }
  const valid: HealthConfigPatch = parsed.data;
  await client.workflow.signalWithStart('placement', {
    workflowId: PLACEMENT_WORKFLOW_ID,
    taskQueue: CONTROL_QUEUE,
    args: [{}],
    signal: configureHealthSignal,
    signalArgs: [valid],
    staticSummary: 'VRAM placement: every reservation of GPU memory, one at a time',
  });
}
