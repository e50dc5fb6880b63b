import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  CompleteMultipartUploadCommand,
  type CompletedPart,
  CreateMultipartUploadCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListPartsCommand,
  PutObjectCommand,
  type S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { ApplicationFailure, Context } from '@temporalio/activity';
import { ErrorType } from '../../common/errors';
import type { UploadResult } from '../../common/checkpoint';
import { type FileEntry, METADATA_FILE } from '../../common/metadata';
import { makeS3Client, partSizeFor } from '../s3-client';
import { checkpointLocation, type NodeContext, s3Prefix } from './context';
import { readMetadata } from './seal';

/** Progress kept in heartbeat details, so a retry after an agent crash resumes instead of re-sending. */
export interface UploadProgress {
  done: string[];
  multipart: Record<string, { uploadId: string; partSize: number }>;
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

function asS3Failure(e: unknown, what: string): never {
  if (e instanceof ApplicationFailure) throw e;
  const err = e as Error & { $metadata?: { httpStatusCode?: number } };
  throw ApplicationFailure.create({ message: `${what}: ${err.name}: ${err.message}`, type: ErrorType.S3Unavailable, nonRetryable: false });
}

async function exists(s3: S3Client, bucket: string, key: string, f: FileEntry): Promise<boolean> {
  try {
    const h = await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
    return h.ContentLength === f.size && h.Metadata?.sha256 === f.sha256;
  } catch (e) {
    if ((e as Error).name === 'NotFound' || (e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404) return false;
    throw e;
  }
}

async function findUpload(s3: S3Client, bucket: string, key: string, partSize: number): Promise<{ uploadId: string; partSize: number } | undefined> {
  const r = await s3.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: key }));
  const newest = (r.Uploads ?? []).filter((u) => u.Key === key).sort((a, b) => (b.Initiated?.getTime() ?? 0) - (a.Initiated?.getTime() ?? 0))[0];
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

async function uploadLarge(
  s3: S3Client, bucket: string, key: string, file: string, f: FileEntry, progress: UploadProgress, counters: Counters, concurrency: number,
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
        const r = await s3.send(new ListPartsCommand({ Bucket: bucket, Key: key, UploadId: mp.uploadId, PartNumberMarker: marker }));
        for (const p of r.Parts ?? []) have.set(p.PartNumber!, { PartNumber: p.PartNumber, ETag: p.ETag, ChecksumSHA256: p.ChecksumSHA256 });
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
    const r = await s3.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: key, ChecksumAlgorithm: 'SHA256', Metadata: { sha256: f.sha256 } }));
    mp = { uploadId: r.UploadId!, partSize };
    progress.multipart[f.path] = mp;
    beat(progress);
  }
  const { uploadId, partSize } = mp;
  const total = Math.max(1, Math.ceil(f.size / partSize));
  const todo: number[] = [];
  for (let n = 1; n <= total; n++) {
    if (have.has(n)) counters.partsResumed++;
    else todo.push(n);
  }
  const fh = await fs.promises.open(file, 'r');
  try {
    const worker = async (): Promise<void> => {
      for (let n = todo.shift(); n !== undefined; n = todo.shift()) {
        const body = await readPart(fh, (n - 1) * partSize, partSize);
        const r = await s3.send(new UploadPartCommand({ Bucket: bucket, Key: key, UploadId: uploadId, PartNumber: n, Body: body, ChecksumAlgorithm: 'SHA256' }));
        have.set(n, { PartNumber: n, ETag: r.ETag, ChecksumSHA256: r.ChecksumSHA256 });
        counters.partsSent++;
        counters.bytesSent += body.length;
        beat(progress);
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
  } finally {
    await fh.close();
  }
  const parts = [...have.values()].sort((a, b) => a.PartNumber! - b.PartNumber!);
  await s3.send(new CompleteMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId, MultipartUpload: { Parts: parts } }));
}

/**
 * Uploads a sealed checkpoint: artifacts first (S3 verifies each part's SHA-256), metadata.json last, so an
 * object store holding metadata.json always holds every file it names.
 */
export async function uploadCheckpoint(ctx: NodeContext, input: { checkpointId: string; concurrency?: number }): Promise<UploadResult> {
  const dir = checkpointLocation(ctx, input.checkpointId);
  const md = readMetadata(dir);
  const bucket = ctx.s3.bucket;
  const prefix = s3Prefix(input.checkpointId);
  const progress = previousProgress();
  const counters: Counters = { bytesSent: 0, partsSent: 0, partsResumed: 0 };
  const s3 = makeS3Client(ctx.s3);
  const concurrency = input.concurrency ?? 8;
  try {
    const small = md.files.filter((f) => f.size <= partSizeFor(f.size));
    const large = md.files.filter((f) => f.size > partSizeFor(f.size));
    const pending = small.filter((f) => !progress.done.includes(f.path));
    // Many small CRIU images: send them concurrently; large page images go part by part.
    const queue = [...pending];
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        for (let f = queue.shift(); f; f = queue.shift()) {
          await s3.send(new PutObjectCommand({
            Bucket: bucket, Key: prefix + f.path, Body: await fs.promises.readFile(path.join(dir, f.path)),
            ChecksumSHA256: b64(f.sha256), Metadata: { sha256: f.sha256 },
          }));
          counters.bytesSent += f.size;
          counters.partsSent++;
          progress.done.push(f.path);
          beat(progress);
        }
      }),
    );
    for (const f of large) {
      if (progress.done.includes(f.path)) continue;
      if (!progress.multipart[f.path] && (await exists(s3, bucket, prefix + f.path, f))) {
        progress.done.push(f.path);
        continue;
      }
      await uploadLarge(s3, bucket, prefix + f.path, path.join(dir, f.path), f, progress, counters, concurrency);
      progress.done.push(f.path);
      delete progress.multipart[f.path];
      beat(progress);
    }
    const mdText = await fs.promises.readFile(path.join(dir, METADATA_FILE));
    await s3.send(new PutObjectCommand({ Bucket: bucket, Key: prefix + METADATA_FILE, Body: mdText, ContentType: 'application/json' }));
    ctx.logger.info({ node: ctx.node, checkpoint: input.checkpointId, job: md.jobId, ...counters }, 'checkpoint uploaded');
    return { bucket, prefix, ...counters };
  } catch (e) {
    asS3Failure(e, `upload of checkpoint ${input.checkpointId}`);
  } finally {
    s3.destroy();
  }
}
