import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  type CompletedPart,
  CreateMultipartUploadCommand,
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
import { type FileEntry, METADATA_FILE } from '../../common/metadata';
import { makeS3Client, partSizeFor, s3ErrorKind, transferPlan } from '../s3-client';
import { checkpointLocation, type NodeContext, s3Prefix } from './context';
import { parseMetadata, sha256Hex } from './seal';

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
    const h = await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
    return h.ContentLength === f.size && h.Metadata?.sha256 === f.sha256;
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

async function readPart(fd: fs.promises.FileHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(length);
  let got = 0;
  while (got < length) {
    const { bytesRead } = await fd.read(buf, got, length - got, offset + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return buf.subarray(0, got);
}

interface Counters {
  bytesSent: number;
  partsSent: number;
  partsResumed: number;
}

/**
 * A large file, part by part. One reader goes through the file in order and hashes every part it reads,
 * those already in S3 from an interrupted attempt included, while up to `concurrency` parts are in flight
 * behind it; the multipart upload is completed only if the whole file's SHA-256 is the one sealed in
 * metadata.json, so a local copy changed after sealing never becomes an object in S3.
 */
async function uploadLarge(
  s3: S3Client,
  bucket: string,
  key: string,
  file: string,
  f: FileEntry,
  progress: UploadProgress,
  counters: Counters,
  concurrency: number,
): Promise<void> {
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
        Metadata: { sha256: f.sha256 },
      }),
    );
    mp = { uploadId: r.UploadId!, partSize };
    progress.multipart[f.path] = mp;
    beat(progress);
  }
  const { uploadId, partSize } = mp;
  const total = Math.max(1, Math.ceil(f.size / partSize));
  const whole = createHash('sha256');
  let read = 0;
  const fh = await fs.promises.open(file, 'r');
  try {
    const inflight = new Set<Promise<void>>();
    let failure: { error: unknown } | null = null;
    for (let n = 1; n <= total && !failure; n++) {
      const body = await readPart(fh, (n - 1) * partSize, Math.min(partSize, f.size - (n - 1) * partSize));
      whole.update(body);
      read += body.length;
      const partSum = createHash('sha256').update(body).digest('base64');
      const prev = have.get(n);
      // A part already in S3 counts only if S3's checksum of it is that of the bytes read here; else it is sent again.
      if (prev && (!prev.ChecksumSHA256 || prev.ChecksumSHA256 === partSum)) {
        counters.partsResumed++;
        if (progress.bytes) progress.bytes.done += body.length;
        beat(progress);
        continue;
      }
      const sending: Promise<void> = s3
        .send(
          new UploadPartCommand({
            Bucket: bucket,
            Key: key,
            UploadId: uploadId,
            PartNumber: n,
            Body: body,
            ChecksumAlgorithm: 'SHA256',
            ChecksumSHA256: partSum,
          }),
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
    if (failure) throw (failure as { error: unknown }).error;
  } finally {
    await fh.close();
  }
  const sum = whole.digest('hex');
  if (sum !== f.sha256 || read !== f.size) {
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
  await s3.send(
    new CompleteMultipartUploadCommand({
      Bucket: bucket,
      Key: key,
      UploadId: uploadId,
      MultipartUpload: { Parts: parts },
    }),
  );
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
  try {
    await refuseOtherCheckpoint(s3, bucket, prefix + METADATA_FILE, mdSha, input.checkpointId);
    const small = md.files.filter((f) => f.size <= partSizeFor(f.size));
    const large = md.files.filter((f) => f.size > partSizeFor(f.size));
    const pending = small.filter((f) => !progress.done.includes(f.path));
    progress.bytes = {
      done: md.files.filter((f) => progress.done.includes(f.path)).reduce((n, f) => n + f.size, 0),
      total: md.files.reduce((n, f) => n + f.size, 0),
    };
    // Many small CRIU images: send them concurrently; large page images go part by part.
    const queue = [...pending];
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        for (let f = queue.shift(); f; f = queue.shift()) {
          try {
            await s3.send(
              new PutObjectCommand({
                Bucket: bucket,
                Key: prefix + f.path,
                Body: await fs.promises.readFile(path.join(dir, f.path)),
                ChecksumSHA256: b64(f.sha256),
                Metadata: { sha256: f.sha256 },
              }),
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
    ctx.logger.info({ ...log, ...counters }, 'checkpoint uploaded');
    return { bucket, prefix, ...counters };
  } catch (e) {
    if (e instanceof ApplicationFailure && e.type === ErrorType.ChecksumMismatch)
      ctx.logger.error({ ...log, err: e.message }, 'local copy differs from its seal: not uploaded');
    asS3Failure(e, `upload of checkpoint ${input.checkpointId}`);
  } finally {
    s3.destroy();
  }
}
