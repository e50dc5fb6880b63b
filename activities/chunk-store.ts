import {
  DeleteObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { unsignedPayloadWithChecksum } from './s3-client';

/**
 * The bucket's content-addressed chunks (format v2) and the locks that keep their garbage collection from
 * deleting a chunk an upload is about to reuse.
 *
 * The lock protocol (S3 is strongly consistent: a read after a write sees it). An upload writes
 * locks/uploads/<checkpointId>, then looks for locks/gc; the collector writes locks/gc, then lists
 * locks/uploads/. Whichever wrote second sees the other's lock: an upload that sees a live locks/gc waits
 * for it to go, and a collector that sees a live upload lock deletes nothing and gives up for this run.
 * The collector looks again before every batch it deletes, so an upload that started meanwhile stops it.
 * Ages are the store's own clock (LastModified against a lock just written), never a node's. A lock not
 * refreshed for its TTL belongs to a process that died and stops counting.
 */

export const CHUNK_PREFIX = 'chunks/';
export const chunkKey = (sha256: string): string => `${CHUNK_PREFIX}${sha256}`;
export const UPLOAD_LOCK_PREFIX = 'locks/uploads/';
export const GC_LOCK = 'locks/gc';
/** An upload refreshes its lock at least this often; one older than UPLOAD_LOCK_TTL_MS died. */
export const UPLOAD_LOCK_REFRESH_MS = 60_000;
export const UPLOAD_LOCK_TTL_MS = 10 * 60_000;
/** The collector refreshes its lock before every batch; uploads stop waiting on one this old. */
export const GC_LOCK_TTL_MS = 2 * 60_000;

const b64 = (hex: string): string => Buffer.from(hex, 'hex').toString('base64');

const notFound = (e: unknown): boolean =>
  (e as Error).name === 'NotFound' ||
  (e as Error).name === 'NoSuchKey' ||
  (e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404;

/**
 * Whether the bucket holds this chunk as S3 verified it: the object's stored SHA-256 checksum (computed by S3
 * from the bytes it received) is the chunk's name, and its length is the chunk's. An object without that
 * checksum (written by something else) does not count; the upload then writes it again.
 */
export async function chunkStored(s3: S3Client, bucket: string, sha256: string, size: number): Promise<boolean> {
  try {
    const h = await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: chunkKey(sha256), ChecksumMode: 'ENABLED' }));
    return h.ContentLength === size && h.ChecksumSHA256 === b64(sha256);
  } catch (e) {
    if (notFound(e)) return false;
    throw e;
  }
}

/** Stores one chunk unless the bucket holds it already; S3 refuses a body whose SHA-256 is not its name. */
export async function putChunk(s3: S3Client, bucket: string, sha256: string, body: Buffer): Promise<'sent' | 'reused'> {
  if (await chunkStored(s3, bucket, sha256, body.length)) return 'reused';
  await s3.send(
    unsignedPayloadWithChecksum(
      new PutObjectCommand({
        Bucket: bucket,
        Key: chunkKey(sha256),
        Body: body,
        ChecksumAlgorithm: 'SHA256',
        ChecksumSHA256: b64(sha256),
      }),
    ),
  );
  return 'sent';
}

/**
 * An object's LastModified (ms, the store's clock), or null when there is none. Read from a listing, not a
 * HEAD: a HEAD's Last-Modified header is whole seconds while a listing has milliseconds, and the ages compared
 * here (a lock against the objects of a listing) must come from one clock at one precision.
 */
export async function modifiedAt(s3: S3Client, bucket: string, key: string): Promise<number | null> {
  const page = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: key, MaxKeys: 10 }));
  const o = (page.Contents ?? []).find((x) => x.Key === key);
  return o?.LastModified?.getTime() ?? null;
}

/** Writes a lock and returns the store's time of writing it (its LastModified): "now" on the store's clock. */
export async function writeLock(s3: S3Client, bucket: string, key: string, body: object): Promise<number> {
  await s3.send(
    new PutObjectCommand({ Bucket: bucket, Key: key, Body: JSON.stringify(body), ContentType: 'application/json' }),
  );
  const at = await modifiedAt(s3, bucket, key);
  if (at === null) throw new Error(`${key}: written, then not found (the store is not read-after-write consistent)`);
  return at;
}

export async function removeLock(s3: S3Client, bucket: string, key: string): Promise<void> {
  await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }));
}

/** Every object under `prefix`, page by page; `onPage` runs after each page (the collector heartbeats there). */
export async function* listAll(s3: S3Client, bucket: string, prefix: string, onPage: () => void = () => undefined) {
  for (let token: string | undefined; ;) {
    const page = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
    onPage();
    for (const o of page.Contents ?? []) if (o.Key) yield o;
    if (!page.IsTruncated) return;
    token = page.NextContinuationToken;
  }
}

/** Upload locks refreshed within their TTL of `now` (the store's clock): uploads that may reuse chunks. */
export async function liveUploadLocks(s3: S3Client, bucket: string, now: number): Promise<string[]> {
  const live: string[] = [];
  for await (const o of listAll(s3, bucket, UPLOAD_LOCK_PREFIX))
    if (o.LastModified && now - o.LastModified.getTime() < UPLOAD_LOCK_TTL_MS)
      live.push(o.Key!.slice(UPLOAD_LOCK_PREFIX.length));
  return live;
}

/**
 * Held by an upload that stores chunks, from before its first chunk is looked up until metadata.json (which
 * names them all) is in S3: while it is live, the collector deletes nothing. Acquiring waits while a collector
 * runs (its lock live), calling `waiting` between looks (the activity heartbeats there).
 */
export class UploadLock {
  private lastWrite = 0;
  private constructor(
    private readonly s3: S3Client,
    private readonly bucket: string,
    private readonly key: string,
    private readonly owner: object,
  ) {}

  static async acquire(
    s3: S3Client,
    bucket: string,
    checkpointId: string,
    owner: object,
    waiting: (gcAgeMs: number) => void,
  ): Promise<UploadLock> {
    const lock = new UploadLock(s3, bucket, UPLOAD_LOCK_PREFIX + checkpointId, owner);
    for (;;) {
      const now = await writeLock(s3, bucket, lock.key, owner);
      lock.lastWrite = Date.now();
      const gc = await modifiedAt(s3, bucket, GC_LOCK);
      if (gc === null || now - gc >= GC_LOCK_TTL_MS) return lock;
      // The collector will see this lock before its next batch and stop; wait for it to remove its own.
      waiting(now - gc);
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  /** Written again when it is getting old, so a long upload never looks dead to the collector. */
  async refresh(): Promise<void> {
    if (Date.now() - this.lastWrite < UPLOAD_LOCK_REFRESH_MS) return;
    this.lastWrite = Date.now();
    await writeLock(this.s3, this.bucket, this.key, this.owner);
  }

  async release(): Promise<void> {
    await removeLock(this.s3, this.bucket, this.key);
  }
}
