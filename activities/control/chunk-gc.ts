import { DeleteObjectsCommand, GetObjectCommand } from '@aws-sdk/client-s3';
import { ApplicationFailure, Context } from '@temporalio/activity';
import type { S3Config } from '../../common/config';
import { type ChunkGcInput, type ChunkGcResult, emptyCollection } from '../../common/chunk-gc';
import { ErrorType } from '../../common/errors';
import { METADATA_FILE, MetadataSchema } from '../../common/metadata';
import { CHUNK_PREFIX, GC_LOCK, listAll, liveUploadLocks, removeLock, writeLock } from '../chunk-store';
import { makeS3Client, s3ErrorKind } from '../s3-client';

const DELETE_BATCH = 1000;

function beat(): void {
  try {
    Context.current().heartbeat();
  } catch {
    /* outside an activity (unit tests) */
  }
}

/**
 * The chunks a metadata.json names. One that does not parse is read for anything shaped like a chunk name
 * (64 hex digits): it may name chunks in a way this version does not know, and a collector keeps what it
 * cannot rule out.
 */
function referencedBy(raw: string): { chunks: string[]; unreadable: boolean } {
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch {
    json = undefined;
  }
  const parsed = MetadataSchema.safeParse(json);
  if (parsed.success)
    return { chunks: parsed.data.files.flatMap((f) => (f.chunks ?? []).map((c) => c.sha256)), unreadable: false };
  return { chunks: raw.match(/[0-9a-f]{64}/g) ?? [], unreadable: true };
}

/**
 * collectChunks: mark and sweep of the bucket's content-addressed chunks. Mark: every chunk named by any
 * checkpoint's metadata.json. Sweep: chunks named by none and older than minAgeMs (the store's clock) are
 * deleted. Safe against uploads in flight by the lock protocol of activities/chunk-store.ts: with a live
 * upload lock the collector deletes nothing (outcome 'skipped', the reason naming the uploads), and it looks
 * again before each batch it deletes, so an upload that starts mid-sweep stops it. Checkpoints deleted by
 * retention free their chunks at the next run past minAgeMs. Idempotent: a run cut off is simply run again.
 */
export function createChunkGcActivities(s3cfg?: S3Config) {
  return {
    async collectChunks(input: ChunkGcInput): Promise<ChunkGcResult> {
      if (!s3cfg)
        throw ApplicationFailure.nonRetryable(
          'collectChunks: the control worker has no S3 configured',
          ErrorType.S3Rejected,
        );
      const s3 = makeS3Client(s3cfg);
      const bucket = s3cfg.bucket;
      const result: ChunkGcResult = emptyCollection(input);
      try {
        let now = await writeLock(s3, bucket, GC_LOCK, { startedAt: new Date().toISOString() });
        const busy = async (): Promise<boolean> => {
          const live = await liveUploadLocks(s3, bucket, now);
          if (live.length === 0) return false;
          result.outcome = 'skipped';
          result.reason = `uploads in flight (${live.slice(0, 5).join(', ')}${live.length > 5 ? ', ...' : ''}): nothing more deleted; run again later`;
          return true;
        };
        if (await busy()) return result;
        const referenced = new Set<string>();
        for await (const o of listAll(s3, bucket, 'checkpoints/', beat)) {
          if (!o.Key!.endsWith(`/${METADATA_FILE}`)) continue;
          const r = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: o.Key }));
          const { chunks, unreadable } = referencedBy(await r.Body!.transformToString());
          result.checkpoints++;
          if (unreadable) result.unreadableMetadata.push(o.Key!);
          for (const c of chunks) referenced.add(c);
        }
        const doomed: { key: string; size: number }[] = [];
        for await (const o of listAll(s3, bucket, CHUNK_PREFIX, beat)) {
          result.chunks++;
          result.chunkBytes += o.Size ?? 0;
          if (referenced.has(o.Key!.slice(CHUNK_PREFIX.length))) result.referenced++;
          else if (!o.LastModified || now - o.LastModified.getTime() < input.minAgeMs) result.keptRecent++;
          else doomed.push({ key: o.Key!, size: o.Size ?? 0 });
        }
        if (result.dryRun) {
          result.deleted = doomed.length;
          result.deletedBytes = doomed.reduce((n, d) => n + d.size, 0);
          return result;
        }
        for (let i = 0; i < doomed.length; i += DELETE_BATCH) {
          // Refreshed, then uploads looked for again: one that began since the last look stops the sweep here.
          now = await writeLock(s3, bucket, GC_LOCK, { startedAt: new Date().toISOString() });
          if (await busy()) return result;
          const batch = doomed.slice(i, i + DELETE_BATCH);
          const r = await s3.send(
            new DeleteObjectsCommand({
              Bucket: bucket,
              Delete: { Objects: batch.map((d) => ({ Key: d.key })), Quiet: true },
            }),
          );
          if (r.Errors && r.Errors.length > 0)
            throw new Error(`${r.Errors.length} chunks not deleted, e.g. ${r.Errors[0].Key}: ${r.Errors[0].Code}`);
          result.deleted += batch.length;
          result.deletedBytes += batch.reduce((n, d) => n + d.size, 0);
          beat();
        }
        return result;
      } catch (e) {
        if (e instanceof ApplicationFailure) throw e;
        const msg = `chunk collection: ${(e as Error).message}`;
        throw s3ErrorKind(e) === 'rejected'
          ? ApplicationFailure.nonRetryable(msg, ErrorType.S3Rejected)
          : ApplicationFailure.retryable(msg, ErrorType.S3Unavailable);
      } finally {
        await removeLock(s3, bucket, GC_LOCK).catch(() => undefined);
        s3.destroy();
      }
    },
  };
}
