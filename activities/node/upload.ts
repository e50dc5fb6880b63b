import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  type CompletedPart,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListPartsCommand,
  PutObjectCommand,
  type S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { ApplicationFailure, Context } from '@temporalio/activity';
import { ErrorType } from '../../common/errors';
import type { ActivityBytes, UploadResult } from '../../common/checkpoint';
import {
  type ChunkRef,
  type FileEntry,
  FORMAT_V2,
  type Metadata,
  METADATA_FILE,
  MetadataSchema,
  SEAL_DRAFT_FILE,
  type SealDraft,
  SealDraftSchema,
} from '../../common/metadata';
import { makeS3Client, partSizeFor, s3ErrorKind, transferPlan, unsignedPayloadWithChecksum } from '../s3-client';
import { UploadLock } from '../chunk-store';
import { type ChunkCounters, readAt, uploadChunks } from './upload-chunks';
import { checkpointLocation, type NodeContext, s3Prefix } from './context';
import { parseMetadata, sha256Hex, streamsOnUpload, writeFileAtomic, writtenStamp } from './seal';

/** Progress kept in heartbeat details, so a retry after an agent crash resumes instead of re-sending. */
export interface UploadProgress {
  done: string[];
  multipart: Record<string, { uploadId: string; partSize: number }>;
  /**
   * Bytes of the checkpoint in S3 so far (sent now or by an earlier attempt) and in all: what a client waiting
   * on the checkpoint shows as progress (it reads the pending activity's heartbeat details). Never used to resume.
   */
  bytes?: ActivityBytes;
}

const b64 = (hex: string): string => Buffer.from(hex, 'hex').toString('base64');

/** A file stored as one object under the checkpoint's prefix, with its whole SHA-256 (format v1, small files). */
type WholeFile = FileEntry & { sha256: string };
const isWhole = (f: { sha256?: string; chunks?: ChunkRef[] }): f is WholeFile => f.sha256 !== undefined && !f.chunks;

function previousProgress(): UploadProgress {
  try {
    const d = Context.current().info.heartbeatDetails as UploadProgress | undefined;
    if (d && Array.isArray(d.done) && d.multipart) return d;
  } catch {
    /* outside an activity */
  }
  return { done: [], multipart: {} };
}

function beat(progress: UploadProgress): void {
  try {
    Context.current().heartbeat(progress);
  } catch {
    /* outside an activity */
  }
}

/** The stable failure for an S3 error: refused for good (S3Rejected), a checksum refused, or retry later. */
function asS3Failure(e: unknown, what: string): never {
  if (e instanceof ApplicationFailure) throw e;
  const err = e as Error;
  const kind = s3ErrorKind(e);
  if (kind === 'rejected')
    throw ApplicationFailure.nonRetryable(`${what}: S3 refused: ${err.name}: ${err.message}`, ErrorType.S3Rejected);
  if (kind === 'checksum')
    throw ApplicationFailure.nonRetryable(
      `${what}: S3 refused the bytes as not matching their sealed sha256: ${err.name}: ${err.message}`,
      ErrorType.ChecksumMismatch,
    );
  throw ApplicationFailure.create({
    message: `${what}: ${err.name}: ${err.message}`,
    type: ErrorType.S3Unavailable,
    nonRetryable: false,
  });
}

async function exists(s3: S3Client, bucket: string, key: string, f: FileEntry): Promise<boolean> {
  try {
    const h = await s3.send(
      new HeadObjectCommand({ Bucket: bucket, Key: key, ...(f.s3Checksum ? { ChecksumMode: 'ENABLED' } : {}) }),
    );
    if (h.ContentLength !== f.size) return false;
    // Uploaded with its hash streamed, the object carries no sha256 of its own: S3's composite checksum, recorded
    // in metadata.json at commit, names it.
    return h.Metadata?.sha256 === f.sha256 || (!!f.s3Checksum && h.ChecksumSHA256 === f.s3Checksum);
  } catch (e) {
    if (
      (e as Error).name === 'NotFound' ||
      (e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404
    )
      return false;
    throw e;
  }
}

async function findUpload(
  s3: S3Client,
  bucket: string,
  key: string,
  partSize: number,
): Promise<{ uploadId: string; partSize: number } | undefined> {
  const r = await s3.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: key }));
  const newest = (r.Uploads ?? [])
    .filter((u) => u.Key === key)
    .sort((a, b) => (b.Initiated?.getTime() ?? 0) - (a.Initiated?.getTime() ?? 0))[0];
  if (!newest?.UploadId) return undefined;
  const parts = await s3.send(new ListPartsCommand({ Bucket: bucket, Key: key, UploadId: newest.UploadId }));
  // Every part but the last has the upload's part size; a different size means another writer's upload.
  const sizes = new Set((parts.Parts ?? []).slice(0, -1).map((p) => p.Size));
  if (sizes.size > 1 || (sizes.size === 1 && !sizes.has(partSize))) return undefined;
  return { uploadId: newest.UploadId, partSize };
}

interface Counters {
  bytesSent: number;
  partsSent: number;
  partsResumed: number;
}

/** A large file's checksums as its one read computed them: SHA-256 of the whole, S3's COMPOSITE SHA-256. */
interface Hashed {
  sha256: string;
  s3Checksum: string;
}

/** S3's COMPOSITE SHA-256 of a multipart object: the SHA-256 of its parts' SHA-256 digests, then the part count. */
export const compositeSha256 = (partDigests: Buffer[]): string =>
  `${createHash('sha256').update(Buffer.concat(partDigests)).digest('base64')}-${partDigests.length}`;

/** A local file's SHA-256 and composite checksum, read once (the check of an object an earlier attempt completed). */
async function hashLocal(file: string, size: number, partSize: number): Promise<Hashed & { read: number }> {
  const whole = createHash('sha256');
  const parts: Buffer[] = [];
  let read = 0;
  const fh = await fs.promises.open(file, 'r');
  try {
    for (let n = 0; n < Math.max(1, Math.ceil(size / partSize)); n++) {
      const body = await readAt(fh, n * partSize, Math.min(partSize, size - n * partSize));
      whole.update(body);
      parts.push(createHash('sha256').update(body).digest());
      read += body.length;
      beat(previousProgress());
    }
  } finally {
    await fh.close();
  }
  return { sha256: whole.digest('hex'), s3Checksum: compositeSha256(parts), read };
}

/**
 * Streamed hashing: an object an earlier attempt completed (the crash came before metadata.json was committed)
 * is kept when the local file, read once now, has its composite checksum; S3 checked every part of it
 * against the SHA-256 computed from the local read that sent it. Another checksum means the local file changed
 * between the two attempts: ChecksumMismatch. Null: no such object, send it.
 */
async function completedEarlier(
  s3: S3Client,
  bucket: string,
  key: string,
  file: string,
  f: { path: string; size: number },
): Promise<Hashed | null> {
  let theirs: string | undefined;
  try {
    const h = await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: key, ChecksumMode: 'ENABLED' }));
    if (h.ContentLength !== f.size || !h.ChecksumSHA256?.includes('-')) return null;
    theirs = h.ChecksumSHA256;
  } catch (e) {
    if (
      (e as Error).name === 'NotFound' ||
      (e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404
    )
      return null;
    throw e;
  }
  const mine = await hashLocal(file, f.size, partSizeFor(f.size));
  if (mine.s3Checksum !== theirs || mine.read !== f.size)
    throw ApplicationFailure.nonRetryable(
      `${f.path}: S3 holds it as uploaded by an earlier attempt (composite sha256 ${theirs}), the local copy now has ${mine.s3Checksum}: changed between attempts`,
      ErrorType.ChecksumMismatch,
    );
  return { sha256: mine.sha256, s3Checksum: mine.s3Checksum };
}

/**
 * A large file, part by part. One reader goes through the file in order and hashes every part it reads,
 * those already in S3 from an interrupted attempt included, while up to `concurrency` parts are in flight
 * behind it. Sealed (f.sha256 known): the multipart upload is completed only if the whole file's SHA-256 is
 * the one sealed in metadata.json, so a local copy changed after sealing never becomes an object in S3.
 * Streamed (f.sha256 absent): this read is the seal; S3 checks each part's SHA-256, so the object is exactly
 * the bytes hashed, and a part an earlier attempt left in S3 that differs from the local bytes now means the
 * file changed between attempts (ChecksumMismatch, never sent again). Either way S3's composite checksum at
 * completion must be the one computed here.
 */
async function uploadLarge(
  s3: S3Client,
  bucket: string,
  key: string,
  file: string,
  f: { path: string; size: number; sha256?: string },
  progress: UploadProgress,
  counters: Counters,
  concurrency: number,
): Promise<Hashed> {
  const streamed = f.sha256 === undefined;
  // Heartbeats are throttled, so the crash may have come before the upload id reached the server: then
  // the upload still in progress for this key in S3 is the one to resume.
  let mp = progress.multipart[f.path] ?? (await findUpload(s3, bucket, key, partSizeFor(f.size)));
  let have = new Map<number, CompletedPart>();
  if (mp) {
    // The server's list is the truth; heartbeat details only tell which upload to ask about.
    try {
      let marker: string | undefined;
      do {
        const r = await s3.send(
          new ListPartsCommand({ Bucket: bucket, Key: key, UploadId: mp.uploadId, PartNumberMarker: marker }),
        );
        for (const p of r.Parts ?? [])
          have.set(p.PartNumber!, { PartNumber: p.PartNumber, ETag: p.ETag, ChecksumSHA256: p.ChecksumSHA256 });
        marker = r.IsTruncated ? r.NextPartNumberMarker : undefined;
      } while (marker);
    } catch (e) {
      if ((e as Error).name !== 'NoSuchUpload') throw e;
      mp = undefined as unknown as typeof mp;
      have = new Map();
    }
  }
  if (!mp) {
    const partSize = partSizeFor(f.size);
    const r = await s3.send(
      new CreateMultipartUploadCommand({
        Bucket: bucket,
        Key: key,
        ChecksumAlgorithm: 'SHA256',
        ...(f.sha256 ? { Metadata: { sha256: f.sha256 } } : {}),
      }),
    );
    mp = { uploadId: r.UploadId!, partSize };
    progress.multipart[f.path] = mp;
    beat(progress);
  }
  const { uploadId, partSize } = mp;
  const total = Math.max(1, Math.ceil(f.size / partSize));
  const whole = createHash('sha256');
  const digests: Buffer[] = [];
  let read = 0;
  const fh = await fs.promises.open(file, 'r');
  try {
    const inflight = new Set<Promise<void>>();
    let failure: { error: unknown } | null = null;
    for (let n = 1; n <= total && !failure; n++) {
      const body = await readAt(fh, (n - 1) * partSize, Math.min(partSize, f.size - (n - 1) * partSize));
      whole.update(body);
      read += body.length;
      const digest = createHash('sha256').update(body).digest();
      digests.push(digest);
      const partSum = digest.toString('base64');
      const prev = have.get(n);
      if (streamed && prev && prev.ChecksumSHA256 !== partSum) {
        // S3 verified that part against the SHA-256 of what an earlier attempt read here: the file changed since.
        failure = {
          error: ApplicationFailure.nonRetryable(
            `${f.path}: part ${n} in S3 (sha256 ${prev.ChecksumSHA256 ?? 'none'}) differs from the local bytes now (${partSum}): changed between attempts`,
            ErrorType.ChecksumMismatch,
          ),
        };
        break;
      }
      // A part already in S3 counts only if S3's checksum of it is that of the bytes read here; else it is sent again.
      if (prev && (!prev.ChecksumSHA256 || prev.ChecksumSHA256 === partSum)) {
        counters.partsResumed++;
        if (progress.bytes) progress.bytes.done += body.length;
        beat(progress);
        continue;
      }
      const sending: Promise<void> = s3
        .send(
          unsignedPayloadWithChecksum(
            new UploadPartCommand({
              Bucket: bucket,
              Key: key,
              UploadId: uploadId,
              PartNumber: n,
              Body: body,
              ChecksumAlgorithm: 'SHA256',
              ChecksumSHA256: partSum,
            }),
          ),
        )
        .then(
          (r) => {
            have.set(n, { PartNumber: n, ETag: r.ETag, ChecksumSHA256: r.ChecksumSHA256 ?? partSum });
            counters.partsSent++;
            counters.bytesSent += body.length;
            if (progress.bytes) progress.bytes.done += body.length;
            beat(progress);
          },
          (error: unknown) => {
            failure ??= { error };
          },
        )
        .finally(() => inflight.delete(sending));
      inflight.add(sending);
      // Reading runs at most `concurrency` parts ahead of the slowest upload, so memory stays bounded.
      if (inflight.size >= concurrency) await Promise.race(inflight);
    }
    await Promise.all(inflight);
    if (failure) {
      const error = (failure as { error: unknown }).error;
      if (error instanceof ApplicationFailure && error.type === ErrorType.ChecksumMismatch) {
        await s3
          .send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId }))
          .catch(() => undefined);
        delete progress.multipart[f.path];
        beat(progress);
      }
      throw error;
    }
  } finally {
    await fh.close();
  }
  const sum = whole.digest('hex');
  const composite = compositeSha256(digests);
  if ((!streamed && sum !== f.sha256) || read !== f.size) {
    // The local copy changed after sealing: these bytes must never become the checkpoint in S3.
    await s3
      .send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId }))
      .catch(() => undefined);
    delete progress.multipart[f.path];
    beat(progress);
    throw ApplicationFailure.nonRetryable(
      `${f.path}: the local copy has sha256 ${sum} (${read} bytes), sealed as ${f.sha256} (${f.size} bytes): changed after sealing; upload aborted`,
      ErrorType.ChecksumMismatch,
    );
  }
  const parts = [...have.values()].sort((a, b) => a.PartNumber! - b.PartNumber!);
  const done = await s3.send(
    new CompleteMultipartUploadCommand({
      Bucket: bucket,
      Key: key,
      UploadId: uploadId,
      MultipartUpload: { Parts: parts },
    }),
  );
  // S3's full-object checksum of what it now holds: the composite of the part checksums it verified. A store
  // that returns none has still checked every part.
  if (done.ChecksumSHA256 && done.ChecksumSHA256 !== composite) {
    await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: key })).catch(() => undefined);
    throw ApplicationFailure.nonRetryable(
      `${f.path}: S3 completed it with composite sha256 ${done.ChecksumSHA256}, the bytes read here give ${composite}: object deleted`,
      ErrorType.ChecksumMismatch,
    );
  }
  return { sha256: sum, s3Checksum: composite };
}

/**
 * Ids are never reused: a metadata.json already in S3 under this id that is not ours belongs to an earlier
 * checkpoint, whose objects must not be overwritten. Ours (same bytes) is a retry after the last PUT.
 */
async function refuseOtherCheckpoint(
  s3: S3Client,
  bucket: string,
  key: string,
  mdSha: string,
  checkpointId: string,
): Promise<void> {
  let theirs: Buffer;
  try {
    const r = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    theirs = Buffer.from(await r.Body!.transformToByteArray());
  } catch (e) {
    if (
      (e as Error).name === 'NoSuchKey' ||
      (e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404
    )
      return;
    throw e;
  }
  if (sha256Hex(theirs) !== mdSha) {
    throw ApplicationFailure.nonRetryable(
      `checkpoint '${checkpointId}' exists in S3 (another metadata.json); checkpoint ids are never reused: nothing uploaded`,
      ErrorType.CheckpointExists,
    );
  }
}

/**
 * Uploads a sealed checkpoint: artifacts first, metadata.json last, so an object store holding metadata.json
 * always holds every file it names. Every byte sent is tied to its sealed SHA-256: small files carry it as
 * their S3 checksum (S3 refuses a body that differs), large files are hashed whole as they stream and their
 * multipart upload is completed only on a match, and metadata.json is checked against the SHA-256 recorded at
 * seal (when the caller has it) before anything is sent. A mismatch is ChecksumMismatch, never retried.
 */
export async function uploadCheckpoint(
  ctx: NodeContext,
  input: { checkpointId: string; concurrency?: number; metadataSha256?: string | null },
): Promise<UploadResult> {
  const dir = checkpointLocation(ctx, input.checkpointId);
  const mdFile = path.join(dir, METADATA_FILE);
  if (!fs.existsSync(mdFile) && fs.existsSync(path.join(dir, SEAL_DRAFT_FILE)))
    return uploadStreamed(ctx, { checkpointId: input.checkpointId, concurrency: input.concurrency });
  let mdText: Buffer;
  try {
    mdText = await fs.promises.readFile(mdFile);
  } catch (e) {
    throw ApplicationFailure.nonRetryable(`${mdFile}: ${(e as Error).message}`, ErrorType.MetadataInvalid);
  }
  const mdSha = sha256Hex(mdText);
  if (input.metadataSha256 && mdSha !== input.metadataSha256) {
    throw ApplicationFailure.nonRetryable(
      `${input.checkpointId}/${METADATA_FILE}: sha256 ${mdSha}, sealed as ${input.metadataSha256}: changed after sealing`,
      ErrorType.ChecksumMismatch,
    );
  }
  const md = parseMetadata(mdText, mdFile);
  const bucket = ctx.s3.bucket;
  const prefix = s3Prefix(input.checkpointId);
  const progress = previousProgress();
  const counters: Counters = { bytesSent: 0, partsSent: 0, partsResumed: 0 };
  const s3 = makeS3Client(ctx.s3);
  const concurrency = input.concurrency ?? transferPlan(Math.max(0, ...md.files.map((f) => f.size))).concurrency;
  const log = { node: ctx.node, checkpoint: input.checkpointId, job: md.jobId };
  let lock: UploadLock | undefined;
  let reused: { bytesReused: number; chunksReused: number } | object = {};
  try {
    await refuseOtherCheckpoint(s3, bucket, prefix + METADATA_FILE, mdSha, input.checkpointId);
    const whole = md.files.filter(isWhole);
    const small = whole.filter((f) => !streamsOnUpload(f.size));
    const large = whole.filter((f) => streamsOnUpload(f.size));
    const chunked = md.files.filter((f) => f.chunks);
    progress.bytes = {
      done: md.files.filter((f) => progress.done.includes(f.path)).reduce((n, f) => n + f.size, 0),
      total: md.files.reduce((n, f) => n + f.size, 0),
    };
    // Many small CRIU images: sent concurrently; large page images go part by part.
    await putSmall(s3, bucket, prefix, dir, small, progress, counters, concurrency);
    if (chunked.length > 0) {
      // A metadata.json the chunked upload committed before a crash: every chunk it names must be in S3, as
      // S3 verified it, before it goes there; the local bytes must still be those chunks.
      const r = await storeChunked(ctx, s3, input.checkpointId, dir, chunked, progress, counters, concurrency, log);
      lock = r.lock;
      reused = r.reused;
    }
    for (const f of large) {
      if (progress.done.includes(f.path)) continue;
      if (!progress.multipart[f.path] && (await exists(s3, bucket, prefix + f.path, f))) {
        progress.done.push(f.path);
        if (progress.bytes) progress.bytes.done += f.size;
        continue;
      }
      await uploadLarge(s3, bucket, prefix + f.path, path.join(dir, f.path), f, progress, counters, concurrency);
      progress.done.push(f.path);
      delete progress.multipart[f.path];
      beat(progress);
    }
    await s3.send(
      new PutObjectCommand({
        Bucket: bucket,
        Key: prefix + METADATA_FILE,
        Body: mdText,
        ContentType: 'application/json',
        ChecksumSHA256: b64(mdSha),
      }),
    );
    ctx.logger.info({ ...log, ...counters, ...reused }, 'checkpoint uploaded');
    return { bucket, prefix, ...counters, ...reused, metadataSha256: mdSha };
  } catch (e) {
    if (e instanceof ApplicationFailure && e.type === ErrorType.ChecksumMismatch)
      ctx.logger.error({ ...log, err: e.message }, 'local copy differs from its seal: not uploaded');
    return asS3Failure(e, `upload of checkpoint ${input.checkpointId}`);
  } finally {
    await lock
      ?.release()
      .catch((e: unknown) => ctx.logger.warn({ ...log, err: (e as Error).message }, 'upload lock left behind'));
    s3.destroy();
  }
}

/** Small files in one PUT each, with their sealed SHA-256 as the S3 checksum (S3 refuses a body that differs). */
async function putSmall(
  s3: S3Client,
  bucket: string,
  prefix: string,
  dir: string,
  files: WholeFile[],
  progress: UploadProgress,
  counters: Counters,
  concurrency: number,
): Promise<void> {
  const queue = files.filter((f) => !progress.done.includes(f.path));
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      for (let f = queue.shift(); f; f = queue.shift()) {
        try {
          await s3.send(
            unsignedPayloadWithChecksum(
              new PutObjectCommand({
                Bucket: bucket,
                Key: prefix + f.path,
                Body: await fs.promises.readFile(path.join(dir, f.path)),
                ChecksumSHA256: b64(f.sha256),
                Metadata: { sha256: f.sha256 },
              }),
            ),
          );
        } catch (e) {
          if (s3ErrorKind(e) === 'checksum') {
            throw ApplicationFailure.nonRetryable(
              `${f.path}: S3 refused the local copy as not matching its sealed sha256 ${f.sha256}: changed after sealing`,
              ErrorType.ChecksumMismatch,
            );
          }
          throw e;
        }
        counters.bytesSent += f.size;
        counters.partsSent++;
        progress.done.push(f.path);
        if (progress.bytes) progress.bytes.done += f.size;
        beat(progress);
      }
    }),
  );
}

/**
 * Format v2: the files as content-addressed chunks (upload-chunks.ts), under this upload's lock, which the
 * caller releases once metadata.json (naming every chunk) is in S3: the collector deletes nothing meanwhile.
 * A draft's file (no `chunks`) is cut here, and must be unchanged since the seal before and after its read;
 * a committed metadata.json's file is read by its recorded chunks, each of which must still be the one named.
 */
async function storeChunked(
  ctx: NodeContext,
  s3: S3Client,
  checkpointId: string,
  dir: string,
  files: (SealDraft['files'][number] & { chunks?: ChunkRef[] })[],
  progress: UploadProgress,
  counters: Counters,
  concurrency: number,
  log: object,
): Promise<{ lock: UploadLock; refs: Map<string, ChunkRef[]>; reused: { bytesReused: number; chunksReused: number } }> {
  const lock = await UploadLock.acquire(s3, ctx.s3.bucket, checkpointId, { node: ctx.node }, (gcAgeMs) => {
    beat(progress);
    ctx.logger.info({ ...log, gcAgeMs }, 'chunk collection in progress: waiting for it to stop');
  });
  const c: ChunkCounters = { bytesSent: 0, chunksSent: 0, bytesReused: 0, chunksReused: 0 };
  const refs = new Map<string, ChunkRef[]>();
  try {
    for (const f of files) {
      const file = path.join(dir, f.path);
      if (!f.chunks) unchangedSinceSeal(file, f);
      const tick = async (n: number): Promise<void> => {
        if (progress.bytes) progress.bytes.done += n;
        beat(progress);
        await lock.refresh();
      };
      refs.set(f.path, await uploadChunks(s3, ctx.s3.bucket, file, f, c, concurrency, tick, f.chunks));
      // The read above is the seal of these bytes: a write during it would make the chunks a mix.
      if (!f.chunks) unchangedSinceSeal(file, f);
    }
  } catch (e) {
    await lock.release().catch(() => undefined);
    throw e;
  }
  counters.bytesSent += c.bytesSent;
  counters.partsSent += c.chunksSent;
  counters.partsResumed += c.chunksReused;
  return { lock, refs, reused: { bytesReused: c.bytesReused, chunksReused: c.chunksReused } };
}

/**
 * The seal did not hash a large file, so what it recorded of it (size, inode, change time) stands in: a file
 * written, truncated or replaced since is refused (ChecksumMismatch, not retried), never hashed and committed.
 */
function unchangedSinceSeal(file: string, f: SealDraft['files'][number]): void {
  let size: number;
  let now: { ino: string; ctimeNs: string };
  try {
    size = fs.statSync(file).size;
    now = writtenStamp(file);
  } catch (e) {
    throw ApplicationFailure.nonRetryable(
      `${f.path}: unreadable after sealing: ${(e as Error).message}`,
      ErrorType.ChecksumMismatch,
    );
  }
  const changed =
    size !== f.size
      ? `size ${size}, sealed ${f.size}`
      : f.written && now.ino !== f.written.ino
        ? `replaced (inode ${now.ino}, sealed ${f.written.ino})`
        : f.written && now.ctimeNs !== f.written.ctimeNs
          ? `written (change time ${now.ctimeNs} ns, sealed ${f.written.ctimeNs} ns)`
          : null;
  if (changed)
    throw ApplicationFailure.nonRetryable(
      `${f.path}: the local copy changed after sealing (${changed}): not uploaded`,
      ErrorType.ChecksumMismatch,
    );
}

/**
 * PATCH 'checkpoint-hash-while-streaming': the seal left seal-draft.json, with the large files unhashed. The
 * small files go first (hashed at seal, sent with that hash as their checksum); each large file is read once,
 * and that read computes its SHA-256 and each part's checksum as the parts go to S3 (S3 verifies every part,
 * so it holds exactly the bytes hashed). Only then is metadata.json committed from those hashes: locally,
 * atomically, then to S3 last. A retry after a crash resumes: small files and completed objects are checked,
 * parts left in S3 must equal the local bytes (else ChecksumMismatch), and a metadata.json already committed
 * locally sends the rest through the sealed path (uploadCheckpoint). No metadata.json ever names bytes no read
 * hashed, and none in S3 names bytes S3 did not verify.
 */
async function uploadStreamed(
  ctx: NodeContext,
  input: { checkpointId: string; concurrency?: number },
): Promise<UploadResult> {
  const dir = checkpointLocation(ctx, input.checkpointId);
  const draftFile = path.join(dir, SEAL_DRAFT_FILE);
  const parsed = SealDraftSchema.safeParse(
    (() => {
      try {
        return JSON.parse(fs.readFileSync(draftFile, 'utf8')) as unknown;
      } catch (e) {
        throw ApplicationFailure.nonRetryable(`${draftFile}: ${(e as Error).message}`, ErrorType.MetadataInvalid);
      }
    })(),
  );
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw ApplicationFailure.nonRetryable(
      `${draftFile}: field '${issue.path.join('.')}' ${issue.message}`,
      ErrorType.MetadataInvalid,
    );
  }
  const draft = parsed.data;
  const bucket = ctx.s3.bucket;
  const prefix = s3Prefix(input.checkpointId);
  const progress = previousProgress();
  const counters: Counters = { bytesSent: 0, partsSent: 0, partsResumed: 0 };
  const s3 = makeS3Client(ctx.s3);
  const concurrency = input.concurrency ?? transferPlan(Math.max(0, ...draft.files.map((f) => f.size))).concurrency;
  const log = { node: ctx.node, checkpoint: input.checkpointId, job: draft.jobId };
  let lock: UploadLock | undefined;
  let reused: { bytesReused: number; chunksReused: number } | object = {};
  try {
    // Nothing of ours is committed yet (no local metadata.json): any metadata.json in S3 is another checkpoint's.
    await refuseOtherCheckpoint(s3, bucket, prefix + METADATA_FILE, '', input.checkpointId);
    const small = draft.files.filter(isWhole);
    progress.bytes = {
      done: draft.files.filter((f) => progress.done.includes(f.path)).reduce((n, f) => n + f.size, 0),
      total: draft.files.reduce((n, f) => n + f.size, 0),
    };
    await putSmall(s3, bucket, prefix, dir, small, progress, counters, concurrency);
    const hashed = new Map<string, Hashed>();
    const chunked = new Map<string, ChunkRef[]>();
    const unhashed = draft.files.filter((f) => f.sha256 === undefined);
    if (draft.chunked && unhashed.length > 0) {
      const r = await storeChunked(ctx, s3, input.checkpointId, dir, unhashed, progress, counters, concurrency, log);
      lock = r.lock;
      reused = r.reused;
      for (const [p, refs] of r.refs) chunked.set(p, refs);
    }
    for (const f of draft.chunked ? [] : unhashed) {
      const file = path.join(dir, f.path);
      // Checked before the read and after it: a write in between would make the hash the upload computes
      // describe bytes CRIU never wrote (or a mix of two versions).
      unchangedSinceSeal(file, f);
      // An object completed by an earlier attempt (not yet committed): kept if the local bytes are still its bytes.
      const earlier = progress.multipart[f.path] ? null : await completedEarlier(s3, bucket, prefix + f.path, file, f);
      if (earlier) {
        unchangedSinceSeal(file, f);
        hashed.set(f.path, earlier);
        continue;
      }
      const sent = await uploadLarge(s3, bucket, prefix + f.path, file, f, progress, counters, concurrency);
      unchangedSinceSeal(file, f);
      hashed.set(f.path, sent);
      delete progress.multipart[f.path];
      beat(progress);
    }
    const { chunked: _draftChunked, ...fields } = draft;
    const doc: Metadata = {
      ...fields,
      ...(chunked.size > 0 ? { format: FORMAT_V2 } : {}),
      files: draft.files.map((f): FileEntry => {
        const h = hashed.get(f.path);
        const c = chunked.get(f.path);
        if (c) return { path: f.path, size: f.size, chunks: c };
        return h ? { path: f.path, size: f.size, sha256: h.sha256, s3Checksum: h.s3Checksum } : (f as FileEntry);
      }),
    };
    const metadata = MetadataSchema.parse(doc);
    const text = Buffer.from(JSON.stringify(metadata, null, 2));
    const mdSha = sha256Hex(text);
    // Committed locally first (atomic): a crash before the PUT finds it, and the retry sends only what is missing.
    writeFileAtomic(path.join(dir, METADATA_FILE), text);
    await s3.send(
      new PutObjectCommand({
        Bucket: bucket,
        Key: prefix + METADATA_FILE,
        Body: text,
        ContentType: 'application/json',
        ChecksumSHA256: b64(mdSha),
      }),
    );
    ctx.logger.info(
      { ...log, ...counters, ...reused, metadataSha256: mdSha },
      chunked.size > 0
        ? 'checkpoint uploaded (content-addressed chunks)'
        : 'checkpoint uploaded (hashed while streaming)',
    );
    return { bucket, prefix, ...counters, ...reused, metadataSha256: mdSha };
  } catch (e) {
    if (e instanceof ApplicationFailure && e.type === ErrorType.ChecksumMismatch)
      ctx.logger.error({ ...log, err: e.message }, 'local copy changed while being uploaded: not committed');
    return asS3Failure(e, `upload of checkpoint ${input.checkpointId}`);
  } finally {
    // Left behind (S3 gone), it stops counting after its TTL; a retry writes it again first.
    await lock
      ?.release()
      .catch((e: unknown) => ctx.logger.warn({ ...log, err: (e as Error).message }, 'upload lock left behind'));
    s3.destroy();
  }
}
