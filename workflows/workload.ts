import { proxyActivities, upsertSearchAttributes } from '@temporalio/workflow';
import type { NodeActivities } from '../activities/node';
import type { WorkloadInfo, WorkloadSpec } from '../activities/node/process';
import { nodeQueue } from '../common/queues';
import { SA_JOB, SA_NODE } from '../common/search-attributes';

/** Starts a workload on a node through its agent (detached, so it outlives the agent). */
export async function runWorkload(input: { node: string; spec: WorkloadSpec }): Promise<WorkloadInfo> {
  upsertSearchAttributes([
    { key: SA_JOB, value: input.spec.jobId },
    { key: SA_NODE, value: input.node },
  ]);
  const node = proxyActivities<NodeActivities>({
    taskQueue: nodeQueue(input.node),
    scheduleToStartTimeout: '1m',
    startToCloseTimeout: '1m',
    retry: { maximumAttempts: 1 },
  });
  return node.startWorkload.executeWithOptions(
    { summary: `start ${input.spec.command[0]} as job ${input.spec.jobId}` },
    [input.spec],
  );
}

/**
 * Stops a job on a node: SIGTERM, then SIGKILL once the grace period (default 30 s) is over. Retried, since a
 * stop is idempotent and names the process by identity: a retry after a lost agent finds it gone or stops it.
 */
export async function stopWorkload(input: {
  node: string;
  jobId: string;
  graceMs?: number;
  reason?: string;
}): Promise<{ stopped: boolean; signal: 'SIGTERM' | 'SIGKILL' | null; afterMs: number }> {
  upsertSearchAttributes([
    { key: SA_JOB, value: input.jobId },
    { key: SA_NODE, value: input.node },
  ]);
  const graceMs = input.graceMs ?? 30000;
  const node = proxyActivities<NodeActivities>({
    taskQueue: nodeQueue(input.node),
    scheduleToStartTimeout: '10m',
    startToCloseTimeout: graceMs + 60000,
    heartbeatTimeout: '30s',
    retry: { maximumAttempts: 5, nonRetryableErrorTypes: ['InvalidInput'] },
  });
  return node.stopWorkload.executeWithOptions(
    { summary: `stop job ${input.jobId} (SIGTERM, SIGKILL after ${graceMs} ms)` },
    [{ jobId: input.jobId, graceMs, reason: input.reason }],
  );
}
