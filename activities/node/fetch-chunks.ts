import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Readable } from 'node:stream';
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { ApplicationFailure } from '@temporalio/activity';
import type { ActivityBytes } from '../../common/checkpoint';
import { ErrorType } from '../../common/errors';
import type { ChunkRef } from '../../common/metadata';
import { chunkKey } from '../chunk-store';
import { heartbeat } from './run-tool';
import { BufferPool } from './chunk-reader';
import { type LocalChunk, readLocalChunk } from './local-chunks';
import { CHUNK_MAX } from '../chunking';

/** Chunks fetched at once: they are small (2-8 MiB), so more requests in flight keep the link busy. */
export const CHUNK_FETCH_CONCURRENCY = 8;

/** Writes all of `buf` at `offset` (a positional write may write less than asked). */
export async function writeAt(fh: fs.promises.FileHandle, buf: Buffer, offset: number): Promise<void> {
  for (let done = 0; done < buf.length;) {
    const { bytesWritten } = await fh.write(buf, done, buf.length - done, offset + done);
    done += bytesWritten;
  }
}

/** Most buffers one writev takes (Linux's IOV_MAX). */
const IOV_MAX = 1024;

/** Writes all of `parts`, in order, from `offset`: one positional writev per IOV_MAX parts, again for any rest. */
export async function writevAt(fh: fs.promises.FileHandle, parts: Buffer[], offset: number): Promise<void> {
  let rest = parts.filter((p) => p.length > 0);
  while (rest.length > 0) {
    const batch = rest.slice(0, IOV_MAX);
    let { bytesWritten } = await fh.writev(batch, offset);
    if (bytesWritten === 0) throw new Error(`writev at ${offset} wrote nothing`);
    offset += bytesWritten;
    let k = 0;
    while (k < batch.length && bytesWritten >= batch[k].length) bytesWritten -= batch[k++].length;
    rest = k < batch.length ? [batch[k].subarray(bytesWritten), ...rest.slice(k + 1)] : rest.slice(k);
  }
}

/**
 * A chunked file (format v2) reassembled from its chunks: up to `concurrency` GETs at once, each chunk hashed
 * part by part as it arrives and refused unless its SHA-256 is its name (ChecksumMismatch, never retried: the
 * bucket holds other bytes under that name), then its parts written at its offset in one writev. The parts are
 * the HTTP body's own buffers: hashed while they are still in the CPU's cache, never copied into a chunk-sized
 * buffer (measured on 1 GiB against MinIO here: about 8% less time than hashing a joined copy). A chunk that
 * `fromNode` indexes (another checkpoint's copy on this node, local-chunks.ts) is read from there instead, under
 * the same check, and fetched only if that copy no longer holds it. The file is complete and verified when
 * every chunk is; metadata.json, which names the chunks, is checked by the caller against its seal.
 * A chunk named twice is fetched once per place (the bytes are small; no cross-chunk bookkeeping).
 */
export async function downloadChunks(
  s3: S3Client,
  bucket: string,
  dest: string,
  f: { path: string; chunks: ChunkRef[] },
  progress: ActivityBytes,
  fromNode: { index: Map<string, LocalChunk>; bytes: number } | null = null,
  concurrency = CHUNK_FETCH_CONCURRENCY,
): Promise<void> {
  fs.mkdirSync(path.dirname(dest), { recursive: true });
  // Buffers for chunks read from this node's own copies; made only when one is read.
  const pool = new BufferPool(concurrency, CHUNK_MAX);
  const offsets: number[] = [];
  f.chunks.reduce((at, c) => (offsets.push(at), at + c.size), 0);
  const fh = await fs.promises.open(dest, 'w');
  try {
    let next = 0;
    let failed = false;
    /** The chunk read from a copy on this node, checked against its name, and written: false to fetch it instead. */
    const copyFromNode = async (at: LocalChunk, sha256: string, i: number): Promise<boolean> => {
      const buf = await pool.take();
      try {
        const chunk = await readLocalChunk(at, sha256, buf);
        if (!chunk) return false;
        await writeAt(fh, chunk, offsets[i]);
      } finally {
        pool.give(buf);
      }
      progress.done += at.size;
      fromNode!.bytes += at.size;
      heartbeat({ bytes: progress });
      return true;
    };
    const worker = async (): Promise<void> => {
      while (!failed && next < f.chunks.length) {
        const i = next++;
        const c = f.chunks[i];
        try {
          const near = fromNode?.index.get(c.sha256);
          if (near && near.size === c.size && (await copyFromNode(near, c.sha256, i))) continue;
          const r = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: chunkKey(c.sha256) }));
          const hash = createHash('sha256');
          const parts: Buffer[] = [];
          let got = 0;
          for await (const part of r.Body as AsyncIterable<Buffer>) {
            if (got + part.length > c.size) {
              (r.Body as Readable).destroy();
              got = c.size + 1;
              break;
            }
            hash.update(part);
            parts.push(part);
            got += part.length;
          }
          const sum = got === c.size ? hash.digest('hex') : null;
          if (sum !== c.sha256)
            throw ApplicationFailure.nonRetryable(
              `${f.path}: chunk ${i} fetched as ${chunkKey(c.sha256)} has ${got > c.size ? `more than ${c.size} bytes` : `sha256 ${sum ?? `none (${got} of ${c.size} bytes)`}`}: the bucket holds other bytes under its name`,
              ErrorType.ChecksumMismatch,
            );
          await writevAt(fh, parts, offsets[i]);
          progress.done += c.size;
          heartbeat({ bytes: progress });
        } catch (e) {
          failed = true;
          if ((e as Error).name === 'NoSuchKey')
            throw ApplicationFailure.nonRetryable(
              `${f.path}: chunk ${i} (${chunkKey(c.sha256)}) is missing from the bucket: the checkpoint is damaged`,
              ErrorType.ChecksumMismatch,
            );
          throw e;
        }
      }
    };
    const results = await Promise.allSettled(Array.from({ length: Math.min(concurrency, f.chunks.length) }, worker));
    const rejected = results.find((x): x is PromiseRejectedResult => x.status === 'rejected');
    if (rejected) throw rejected.reason;
  } finally {
    await fh.close();
  }
}
