import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { GetObjectCommand, HeadObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { ApplicationFailure } from '@temporalio/activity';
import { ErrorType } from '../../common/errors';
import { assertSafeId } from '../../common/ids';
import { METADATA_FILE, type Metadata } from '../../common/metadata';
import { makeS3Client, type TransferPlan, transferPlan } from '../s3-client';
import type { ActivityBytes } from '../../common/checkpoint';
import { checkpointDir, checkpointLocation, type NodeContext, restoreCopyDir, s3Prefix, stagedDir } from './context';
import { setAsideCorrupt } from './corrupt';
import { linkStagedCopy, releaseStaging, stagingFits } from './staging';
import { heartbeat } from './run-tool';
import { downloadChunks, writeAt } from './fetch-chunks';
import { localChunkIndex } from './local-chunks';
import { parseMetadata, sameMetadata, sha256Hex, verifyLocal, writeFileAtomic } from './seal';

async function getBytes(s3: S3Client, bucket: string, key: string): Promise<Buffer> {
  const r = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  return Buffer.from(await r.Body!.transformToByteArray());
}

/** The body of a GET (all of it, or one range), read into one buffer of the expected size; may come back shorter. */
async function readBody(body: Readable, expected: number): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(expected);
  let got = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    if (got + chunk.length > expected) throw new Error(`S3 sent more than the ${expected} bytes asked for`);
    chunk.copy(buf, got);
    got += chunk.length;
  }
  return buf.subarray(0, got);
}

/**
 * One file, hashed on the way to disk: verification costs no second read. A small file is one streamed GET;
 * a large one is fetched as ranged GETs of one part each, `concurrency` at a time (transferPlan), each written
 * at its offset as it arrives and hashed in order; parts that arrive ahead of the next one to hash wait in
 * memory, at most 2 x concurrency of them, so memory stays bounded. The caller compares the hash with the seal,
 * so a short or changed object is a checksum mismatch whichever way it came. By default one streamed GET per
 * file: ranged GETs (a plan with concurrency > 1) measured slower here (bench/transfer.ts: 90 vs 123 MB/s at
 * 1 GiB on 2 shared cores), so they are only what the bench compares against.)
 */
export async function downloadFile(
  s3: S3Client,
  bucket: string,
  key: string,
  dest: string,
  size: number,
  progress: ActivityBytes,
  s3Checksum?: string,
  plan: TransferPlan = { partSize: transferPlan(size).partSize, concurrency: 1 },
): Promise<string> {
  fs.mkdirSync(path.dirname(dest), { recursive: true });
  const hash = createHash('sha256');
  const { partSize, concurrency } = plan;
  const parts = Math.max(1, Math.ceil(size / partSize));
  if (parts === 1 || concurrency === 1) {
    const r = await s3.send(
      new GetObjectCommand({ Bucket: bucket, Key: key, ...(s3Checksum ? { ChecksumMode: 'ENABLED' } : {}) }),
    );
    checkServedChecksum(r.ChecksumSHA256, s3Checksum, key, r.Body as Readable);
    let n = 0;
    const tap = new Transform({
      transform(chunk: Buffer, _enc, done) {
        hash.update(chunk);
        progress.done += chunk.length;
        // The bytes so far are the heartbeat's details: a client waiting on the restore shows them.
        if (++n % 256 === 0) heartbeat({ bytes: progress });
        done(null, chunk);
      },
    });
    await pipeline(r.Body as Readable, tap, fs.createWriteStream(dest, { highWaterMark: 4 << 20 }));
    return hash.digest('hex');
  }
  if (s3Checksum) {
    // Ranged GETs carry no full-object checksum: one HEAD asks for it before a byte is read.
    const h = await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: key, ChecksumMode: 'ENABLED' }));
    checkServedChecksum(h.ChecksumSHA256, s3Checksum, key, null);
  }
  const fh = await fs.promises.open(dest, 'w');
  try {
    const arrived = new Map<number, Buffer>();
    let next = 0; // the next part to hash
    let taken = 0; // the next part a worker fetches
    let failed = false;
    let wake: () => void = () => undefined;
    let moved = new Promise<void>((r) => (wake = r));
    const advance = (): void => {
      for (let b = arrived.get(next); b; b = arrived.get(next)) {
        hash.update(b);
        arrived.delete(next++);
      }
      const w = wake;
      moved = new Promise<void>((r) => (wake = r));
      w();
    };
    const worker = async (): Promise<void> => {
      while (!failed && taken < parts) {
        // Far ahead of the part being hashed: wait, so parts held in memory stay bounded.
        if (taken - next >= 2 * concurrency) {
          await moved;
          continue;
        }
        const i = taken++;
        const start = i * partSize;
        const length = Math.min(partSize, size - start);
        try {
          const r = await s3.send(
            new GetObjectCommand({ Bucket: bucket, Key: key, Range: `bytes=${start}-${start + length - 1}` }),
          );
          const buf = await readBody(r.Body as Readable, length);
          await writeAt(fh, buf, start);
          progress.done += buf.length;
          heartbeat({ bytes: progress });
          arrived.set(i, buf);
          if (buf.length < length) {
            // A short object: hash what came, stop fetching; the caller's comparison with the seal fails.
            failed = true;
          }
        } catch (e) {
          failed = true;
          advance();
          throw e;
        }
        advance();
      }
    };
    const results = await Promise.allSettled(Array.from({ length: Math.min(concurrency, parts) }, worker));
    const rejected = results.find((x): x is PromiseRejectedResult => x.status === 'rejected');
    if (rejected) throw rejected.reason;
    return hash.digest('hex');
  } finally {
    await fh.close();
  }
}

/**
 * The object S3 serves must be the one the upload completed: its full-object (composite) checksum, sent in the
 * response headers, is compared with the one metadata.json recorded before a byte is read. The streamed
 * SHA-256 still checks the bytes themselves. Checkpoints without the record (older ones) skip this.
 */
function checkServedChecksum(
  served: string | undefined,
  recorded: string | undefined,
  key: string,
  body: Readable | null,
): void {
  if (!recorded || served === recorded) return;
  body?.destroy();
  throw ApplicationFailure.nonRetryable(
    `${key}: S3 serves an object with checksum ${served ?? 'none'}, metadata.json recorded ${recorded} at upload: replaced after the checkpoint`,
    ErrorType.ChecksumMismatch,
  );
}

export interface FetchResult {
  dir: string;
  bytes: number;
  source: 's3' | 'nvme';
  /** Downloaded into memory (tmpfs): CRIU reads it from there, and it is released after the restore. */
  staged: boolean;
  metadata: Metadata;
  /** Of a download from S3: the bytes of chunks read from other checkpoints on this node instead, each checked by its name. */
  bytesFromNode?: number;
}

const fromThisNode = (n: { bytes: number } | null): { bytesFromNode?: number } =>
  n?.bytes ? { bytesFromNode: n.bytes } : {};

/**
 * Makes a verified copy of a checkpoint on this node: the local copy if it verifies, else a download from S3
 * with every file checked against metadata.json, into memory when it fits (CRIU then reads it at memory
 * speed), else into the data directory. metadata.json itself is checked against the SHA-256 recorded at seal
 * when the caller has it, so a replaced metadata.json (naming other bytes) is refused too. A local copy that
 * fails verification is set aside (activities/node/corrupt.ts) before the download, so it cannot fail the next restore again. Never
 * returns unverified bytes.
 */
export async function fetchCheckpoint(
  ctx: NodeContext,
  input: { checkpointId: string; metadataSha256?: string | null; attemptId?: string },
): Promise<FetchResult> {
  if (input.attemptId !== undefined) assertSafeId('attemptId', input.attemptId);
  const localDir = checkpointLocation(ctx, input.checkpointId);
  const local = fs.existsSync(path.join(localDir, METADATA_FILE));
  const log = { node: ctx.node, checkpoint: input.checkpointId };
  if (local) {
    const inMemory = localDir === stagedDir(ctx, input.checkpointId);
    try {
      // The checkpoint's copy in memory is read through the restore's own names (linkStagedCopy), never in place.
      const dir = inMemory ? linkStagedCopy(ctx, input.checkpointId, input.attemptId) : localDir;
      const metadata = await verifyLocal(dir, input.metadataSha256).catch((e: unknown) => {
        if (inMemory)
          releaseStaging(ctx, { checkpointId: input.checkpointId, copy: 'restore', attemptId: input.attemptId });
        throw e;
      });
      return {
        dir,
        bytes: metadata.files.reduce((s, f) => s + f.size, 0),
        source: 'nvme',
        staged: inMemory,
        metadata,
      };
    } catch (e) {
      const type = e instanceof ApplicationFailure ? e.type : null;
      if (type === ErrorType.ChecksumMismatch || type === ErrorType.MetadataInvalid) {
        // Corrupt for good (bytes do not match their seal): left in place it would fail the next restore again.
        const { movedTo } = setAsideCorrupt(ctx, {
          checkpointId: input.checkpointId,
          reason: `failed verification before a restore: ${(e as Error).message}`,
        });
        ctx.logger.warn(
          { ...log, err: (e as Error).message, movedTo },
          'local copy failed verification: set aside; fetching from S3',
        );
      } else {
        ctx.logger.warn({ ...log, err: (e as Error).message }, 'local copy could not be verified; using S3');
      }
    }
  }
  const s3 = makeS3Client(ctx.s3);
  const prefix = s3Prefix(input.checkpointId);
  try {
    let raw: Buffer;
    try {
      raw = await getBytes(s3, ctx.s3.bucket, prefix + METADATA_FILE);
    } catch (e) {
      if ((e as Error).name === 'NoSuchKey')
        throw ApplicationFailure.nonRetryable(
          `checkpoint ${input.checkpointId}: no metadata.json in S3 or on this node`,
          ErrorType.CheckpointNotFound,
        );
      throw ApplicationFailure.retryable(`S3: ${(e as Error).message}`, ErrorType.S3Unavailable);
    }
    if (input.metadataSha256 && sha256Hex(raw) !== input.metadataSha256) {
      throw ApplicationFailure.nonRetryable(
        `${input.checkpointId}/${METADATA_FILE}: S3 copy has sha256 ${sha256Hex(raw)}, sealed as ${input.metadataSha256}: replaced after the checkpoint`,
        ErrorType.ChecksumMismatch,
      );
    }
    const metadata = parseMetadata(raw, `metadata.json of ${input.checkpointId} in S3`);
    const bytes = metadata.files.reduce((s, f) => s + f.size, 0);
    const staged = stagingFits(ctx, bytes).fits;
    // Into the restore attempt's own copy in memory (released after CRIU), or the node's disk copy (kept, shared
    // by the restores of this node: each downloads beside it under a name of its own).
    const dir = staged
      ? restoreCopyDir(ctx, input.checkpointId, input.attemptId)!
      : checkpointDir(ctx, input.checkpointId);
    const staging = staged || input.attemptId === undefined ? `${dir}.fetch` : `${dir}.${input.attemptId}.fetch`;
    fs.rmSync(staging, { recursive: true, force: true });
    const progress: ActivityBytes = { done: 0, total: bytes };
    // Chunks of other checkpoints this node holds (an earlier one of the job, a replica's) are read, not fetched.
    const fromNode = metadata.files.some((f) => f.chunks)
      ? { index: localChunkIndex(ctx, input.checkpointId), bytes: 0 }
      : null;
    for (const f of metadata.files) {
      let sum: string | undefined;
      try {
        if (f.chunks) {
          // Format v2: each chunk is verified by its name as it arrives; together they are the file.
          await downloadChunks(
            s3,
            ctx.s3.bucket,
            path.join(staging, f.path),
            { path: f.path, chunks: f.chunks },
            progress,
            fromNode,
          );
          continue;
        }
        sum = await downloadFile(
          s3,
          ctx.s3.bucket,
          prefix + f.path,
          path.join(staging, f.path),
          f.size,
          progress,
          f.s3Checksum,
        );
      } catch (e) {
        if (e instanceof ApplicationFailure && e.type === ErrorType.ChecksumMismatch) {
          fs.rmSync(staging, { recursive: true, force: true });
          throw e;
        }
        // A retry starts over; a partial copy left in memory would hold it until then, or for good.
        fs.rmSync(staging, { recursive: true, force: true });
        throw ApplicationFailure.retryable(
          `S3 download of ${f.path}: ${(e as Error).message}`,
          ErrorType.S3Unavailable,
        );
      }
      if (sum !== f.sha256) {
        fs.rmSync(staging, { recursive: true, force: true });
        throw ApplicationFailure.nonRetryable(
          `${input.checkpointId}/${f.path}: S3 copy has sha256 ${sum}, metadata.json says ${f.sha256}`,
          ErrorType.ChecksumMismatch,
        );
      }
    }
    writeFileAtomic(path.join(staging, METADATA_FILE), raw);
    if (!staged && sameMetadata(dir, raw)) {
      // Another restore on this node completed the disk copy meanwhile, verified against this very metadata.json:
      // it may be reading it now, so it is kept and this download dropped.
      fs.rmSync(staging, { recursive: true, force: true });
      return { dir, bytes, source: 's3', staged, metadata, ...fromThisNode(fromNode) };
    }
    fs.rmSync(dir, { recursive: true, force: true });
    fs.renameSync(staging, dir);
    if (fromNode?.bytes)
      ctx.logger.info({ ...log, bytes, fromNode: fromNode.bytes }, 'chunks this node held were read, not fetched');
    return { dir, bytes, source: 's3', staged, metadata, ...fromThisNode(fromNode) };
  } finally {
    s3.destroy();
  }
}
