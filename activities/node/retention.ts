import { assertSafeId } from '../../common/ids';
import { ApplicationFailure as Refusal } from '@temporalio/activity';
import { ErrorType as Errors } from '../../common/errors';
import type { NodeContext } from './context';
import { deleteCheckpointDir } from './tier';

/** deleteLocalCheckpoint: this node's copy of a checkpoint the job's retention dropped (disk and memory). Idempotent. */
export function createRetentionNodeActivities(ctx: NodeContext) {
  return {
    async deleteLocalCheckpoint(input: { checkpointId: string }): Promise<{ deleted: boolean }> {
      const checkpointId = safeCheckpointId(input.checkpointId);
      const r = deleteCheckpointDir(ctx, { checkpointId });
      ctx.logger.info(
        { checkpoint: checkpointId, deleted: r.deleted },
        'checkpoint deleted from this node by retention',
      );
      return r;
    },
  };
}

/** A bad id is refused for good, naming the field, before anything is deleted. */
function safeCheckpointId(value: unknown): string {
  try {
    return assertSafeId('checkpointId', value);
  } catch (e) {
    throw Refusal.nonRetryable((e as Error).message, Errors.InvalidInput, { field: 'checkpointId' });
  }
}
