import { DeleteObjectCommand, DeleteObjectsCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { ApplicationFailure } from '@temporalio/activity';
import type { S3Config } from '../../common/config';
import { ErrorType } from '../../common/errors';
import { METADATA_FILE } from '../../common/metadata';
import { assertSafeId } from '../../common/ids';
import { makeS3Client, s3ErrorKind } from '../s3-client';

/**
 * deleteCheckpoint: a checkpoint removed from S3 by the job's retention. metadata.json goes FIRST: without it
 * the rest is no checkpoint (the catalogue and every restore look for it), so a deletion cut off halfway
 * never leaves something that looks valid. Idempotent: what is already gone is not an error. The node's copy
 * is deleted by the node activity deleteLocalCheckpoint.
 */
export function createRetentionActivities(s3?: S3Config) {
  return {
    async deleteCheckpoint(input: { checkpointId: string; node: string }): Promise<{ deletedObjects: number }> {
      const checkpointId = safeCheckpointId(input.checkpointId);
      if (!s3)
        throw ApplicationFailure.nonRetryable(
          'deleteCheckpoint: the control worker has no S3 configured',
          ErrorType.S3Rejected,
        );
      const client = makeS3Client(s3);
      const prefix = `checkpoints/${checkpointId}/`;
      try {
        await client.send(new DeleteObjectCommand({ Bucket: s3.bucket, Key: `${prefix}${METADATA_FILE}` }));
        let deleted = 1;
        for (let token: string | undefined; ;) {
          const page = await client.send(
            new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: prefix, ContinuationToken: token }),
          );
          const keys = (page.Contents ?? []).map((o) => o.Key).filter((k): k is string => typeof k === 'string');
          if (keys.length > 0) {
            const r = await client.send(
              new DeleteObjectsCommand({
                Bucket: s3.bucket,
                Delete: { Objects: keys.map((Key) => ({ Key })), Quiet: true },
              }),
            );
            if (r.Errors && r.Errors.length > 0)
              throw new Error(`${r.Errors.length} objects not deleted, e.g. ${r.Errors[0].Key}: ${r.Errors[0].Code}`);
            deleted += keys.length;
          }
          if (!page.IsTruncated) break;
          token = page.NextContinuationToken;
        }
        return { deletedObjects: deleted };
      } catch (e) {
        if (e instanceof ApplicationFailure) throw e;
        const kind = s3ErrorKind(e);
        const msg = `delete checkpoint ${checkpointId} from S3: ${(e as Error).message}`;
        throw kind === 'rejected'
          ? ApplicationFailure.nonRetryable(msg, ErrorType.S3Rejected)
          : ApplicationFailure.retryable(msg, ErrorType.S3Unavailable);
      } finally {
        client.destroy();
      }
    },
  };
}

/** A bad id is refused for good, naming the field, before anything is deleted. */
function safeCheckpointId(value: unknown): string {
  try {
    return assertSafeId('checkpointId', value);
  } catch (e) {
    throw ApplicationFailure.nonRetryable((e as Error).message, ErrorType.InvalidInput, { field: 'checkpointId' });
  }
}
