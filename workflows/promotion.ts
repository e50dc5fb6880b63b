import { condition, continueAsNew, defineQuery, defineSignal, getExternalWorkflowHandle, proxyActivities, setHandler, workflowInfo } from '@temporalio/workflow';
import type { Duration } from '@temporalio/common';
import type { NodeActivities } from '../activities/node';
import type { UploadResult } from '../common/checkpoint';
import { checkpointWorkflowId, nodeQueue } from '../common/queues';
import { promotedSignal } from './checkpoint';
import { describeFailure } from './failures';

export const enqueueSignal = defineSignal<[{ checkpointId: string }]>('enqueue');
export const promotionStatusQuery = defineQuery<{ node: string; pending: string[]; promoted: string[]; lastError: string | null }>('status');

/**
 * One per node (`promote/<node>`): uploads checkpoints left on the node's NVMe tier when S3 was out of reach.
 * Retries forever with capped backoff, so nobody has to act once S3 answers again.
 */
export async function promotion(input: { node: string; pending?: string[]; idleTimeout?: Duration }): Promise<void> {
  const pending: string[] = [...(input.pending ?? [])];
  const promoted: string[] = [];
  let lastError: string | null = null;
  setHandler(enqueueSignal, ({ checkpointId }) => {
    if (!pending.includes(checkpointId)) pending.push(checkpointId);
  });
  setHandler(promotionStatusQuery, () => ({ node: input.node, pending, promoted, lastError }));
  const node = proxyActivities<NodeActivities>({
    taskQueue: nodeQueue(input.node), startToCloseTimeout: '2h', heartbeatTimeout: '15s',
    retry: { initialInterval: '2s', backoffCoefficient: 2, maximumInterval: '1m', nonRetryableErrorTypes: ['MetadataInvalid', 'CheckpointNotFound'] },
  });
  for (;;) {
    if (pending.length === 0 && !(await condition(() => pending.length > 0, input.idleTimeout ?? '1h'))) return;
    const checkpointId = pending[0];
    let result: UploadResult | null = null;
    try {
      result = await node.upload.executeWithOptions({ summary: `promote ${checkpointId} from nvme to S3` }, [{ checkpointId }]);
    } catch (err) {
      // Only a checkpoint that can never be uploaded gets here (its metadata is gone or invalid).
      lastError = `${checkpointId}: ${describeFailure(err)}`;
    }
    pending.shift();
    if (result) {
      promoted.push(checkpointId);
      await getExternalWorkflowHandle(checkpointWorkflowId(checkpointId)).signal(promotedSignal, result).catch(() => undefined);
    }
    if (workflowInfo().continueAsNewSuggested) await continueAsNew<typeof promotion>({ ...input, pending });
  }
}
