import {
  condition,
  continueAsNew,
  defineQuery,
  defineSignal,
  getExternalWorkflowHandle,
  patched,
  proxyActivities,
  setHandler,
  workflowInfo,
} from '@temporalio/workflow';
import type { Duration } from '@temporalio/common';
import type { NodeActivities } from '../activities/node';
import type { UploadResult } from '../common/checkpoint';
import { ErrorType } from '../common/errors';
import { STATUS_QUERY } from '../common/outcome';
import type { DeferredPromotion, PromotionStatus } from '../common/promotion';
import { checkpointWorkflowId, nodeQueue } from '../common/queues';
import { promotedSignal, unpromotableSignal } from './checkpoint';
import { describeFailure, failureType } from './failures';

export type { DeferredPromotion, PromotionStatus } from '../common/promotion';

/** metadataSha256: recorded at seal; the upload refuses a local metadata.json that differs from it. */
export const enqueueSignal = defineSignal<[{ checkpointId: string; metadataSha256?: string | null }]>('enqueue');
export const promotionStatusQuery = defineQuery<PromotionStatus>(STATUS_QUERY);

/** Backoff of a refused checkpoint: 1 minute, doubling, at most an hour. */
export const REJECTED_BACKOFF_MS = { initial: 60_000, max: 3_600_000 };

/**
 * One per node (`promote/<node>`): uploads checkpoints left on the node's NVMe tier when S3 was out of reach.
 * Retries forever with capped backoff, so nobody has to act once S3 answers again. A checkpoint S3 refuses
 * (access denied, no such bucket: an operator must act) is recorded and set aside with its own backoff, so
 * later checkpoints are still promoted; one whose local copy no longer matches its seal can never be
 * promoted, and its checkpoint workflow is told so.
 */
export async function promotion(input: {
  node: string;
  pending?: string[];
  deferred?: DeferredPromotion[];
  metadataSha256?: Record<string, string>;
  idleTimeout?: Duration;
}): Promise<void> {
  const pending: string[] = [...(input.pending ?? [])];
  const sealedAs: Record<string, string> = { ...(input.metadataSha256 ?? {}) };
  const deferred: DeferredPromotion[] = [...(input.deferred ?? [])];
  const promoted: string[] = [];
  let lastError: string | null = null;
  setHandler(enqueueSignal, ({ checkpointId, metadataSha256 }) => {
    if (metadataSha256) sealedAs[checkpointId] = metadataSha256;
    if (!pending.includes(checkpointId) && !deferred.some((d) => d.checkpointId === checkpointId))
      pending.push(checkpointId);
  });
  setHandler(promotionStatusQuery, () => ({ node: input.node, pending, promoted, deferred, lastError }));
  const node = proxyActivities<NodeActivities>({
    taskQueue: nodeQueue(input.node),
    startToCloseTimeout: '2h',
    heartbeatTimeout: '15s',
    retry: {
      initialInterval: '2s',
      backoffCoefficient: 2,
      maximumInterval: '1m',
      nonRetryableErrorTypes: [
        'MetadataInvalid',
        'CheckpointNotFound',
        ErrorType.S3Rejected,
        ErrorType.ChecksumMismatch,
        ErrorType.CheckpointExists,
      ],
    },
  });
  for (;;) {
    // Refused checkpoints whose time has come go to the back of the queue.
    for (const d of deferred.filter((x) => x.retryAt <= Date.now())) {
      if (!pending.includes(d.checkpointId)) pending.push(d.checkpointId);
    }
    if (pending.length === 0) {
      if (deferred.length > 0) {
        const wait = Math.max(1, Math.min(...deferred.map((d) => d.retryAt)) - Date.now());
        await condition(() => pending.length > 0, wait);
        continue;
      }
      if (!(await condition(() => pending.length > 0, input.idleTimeout ?? '1h'))) return;
    }
    const checkpointId = pending[0];
    let result: UploadResult | null = null;
    try {
      result = await node.upload.executeWithOptions({ summary: `promote ${checkpointId} from nvme to S3` }, [
        { checkpointId, metadataSha256: sealedAs[checkpointId] ?? null },
      ]);
    } catch (err) {
      // Only a checkpoint that cannot be uploaded now gets here: refused by S3, corrupt, or gone.
      lastError = `${checkpointId}: ${describeFailure(err)}`;
      const type = failureType(err);
      if (patched('promotion-defers-rejected')) {
        if (type === ErrorType.S3Rejected) {
          const prev = deferred.find((d) => d.checkpointId === checkpointId);
          const attempts = (prev?.attempts ?? 0) + 1;
          const backoff = Math.min(REJECTED_BACKOFF_MS.max, REJECTED_BACKOFF_MS.initial * 2 ** (attempts - 1));
          const entry: DeferredPromotion = { checkpointId, attempts, retryAt: Date.now() + backoff, lastError };
          if (prev) Object.assign(prev, entry);
          else deferred.push(entry);
        } else {
          // Not a refusal: it will not get better by waiting, so it leaves the loop.
          const i = deferred.findIndex((d) => d.checkpointId === checkpointId);
          if (i >= 0) deferred.splice(i, 1);
          if (
            type === ErrorType.ChecksumMismatch ||
            type === ErrorType.MetadataInvalid ||
            type === ErrorType.CheckpointExists
          ) {
            await getExternalWorkflowHandle(checkpointWorkflowId(checkpointId))
              .signal(unpromotableSignal, { reason: describeFailure(err), type })
              .catch(() => undefined);
          }
        }
      }
    }
    pending.shift();
    if (result || !deferred.some((d) => d.checkpointId === checkpointId)) delete sealedAs[checkpointId];
    if (result) {
      promoted.push(checkpointId);
      const i = deferred.findIndex((d) => d.checkpointId === checkpointId);
      if (i >= 0) deferred.splice(i, 1);
      await getExternalWorkflowHandle(checkpointWorkflowId(checkpointId))
        .signal(promotedSignal, result)
        .catch(() => undefined);
    }
    if (workflowInfo().continueAsNewSuggested)
      await continueAsNew<typeof promotion>({ ...input, pending, deferred, metadataSha256: sealedAs });
  }
}
