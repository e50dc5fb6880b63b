import { proxyActivities, upsertSearchAttributes } from '@temporalio/workflow';
import type { NodeActivities } from '../activities/node';
import type { WorkloadInfo, WorkloadSpec } from '../activities/node/process';
import { nodeQueue } from '../common/queues';
import { SA_JOB, SA_NODE } from '../common/search-attributes';

/** Starts a workload on a node through its agent (detached, so it outlives the agent). */
export async function runWorkload(input: { node: string; spec: WorkloadSpec }): Promise<WorkloadInfo> {
  upsertSearchAttributes([{ key: SA_JOB, value: input.spec.jobId }, { key: SA_NODE, value: input.node }]);
  const node = proxyActivities<NodeActivities>({ taskQueue: nodeQueue(input.node), scheduleToStartTimeout: '1m', startToCloseTimeout: '1m', retry: { maximumAttempts: 1 } });
  return node.startWorkload.executeWithOptions({ summary: `start ${input.spec.command[0]} as job ${input.spec.jobId}` }, [input.spec]);
}
