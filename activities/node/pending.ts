import type { NodeContext } from './context';
import { journalOutcome } from './journal';
import { listLocalCheckpoints } from './tier';

/**
 * Checkpoints sealed on this node whose upload never finished: tier nvme, waiting for the promotion loop. A copy
 * fetched here for a restore was sealed elsewhere (no seal in this node's journal) and is not counted.
 */
export function pendingUploadCount(ctx: NodeContext): number {
  return listLocalCheckpoints(ctx).filter(
    (c) =>
      journalOutcome(ctx, 'checkpoint', c.checkpointId, 'seal').state === 'done' &&
      journalOutcome(ctx, 'checkpoint', c.checkpointId, 'upload').state !== 'done',
  ).length;
}
