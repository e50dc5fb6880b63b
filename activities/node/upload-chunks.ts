import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import type { S3Client } from '@aws-sdk/client-s3';
import { ApplicationFailure } from '@temporalio/activity';
import { ErrorType } from '../../common/errors';
import type { ChunkRef } from '../../common/metadata';
import { CHUNK_MAX, ChunkSplitter } from '../chunking';
import { putChunk } from '../chunk-store';

/** What a chunked upload moved: bytes and chunks sent, and those the bucket already held (not sent again). */
export interface ChunkCounters {
  bytesSent: number;
  chunksSent: number;
  bytesReused: number;
  chunksReused: number;
}

/** `length` bytes of the file from `offset`, or fewer at its end. */
export async function readAt(fh: fs.promises.FileHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(length);
  let got = 0;
  while (got < length) {
    const { bytesRead } = await fh.read(buf, got, length - got, offset + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return buf.subarray(0, got);
}

/**
 * One file as content-addressed chunks: one read goes through it in order, cuts it (activities/chunking.ts),
 * and hashes each chunk, whose SHA-256 is its key; up to `concurrency` chunks are in flight behind the read,
 * each stored unless S3 already holds it as verified (putChunk). This read is the file's seal: the returned
 * list, in order, is what metadata.json records. A chunk twice in one file is sent once. A file shorter than
 * sealed is ChecksumMismatch (the caller also checks it was not written meanwhile). `tick` runs after each
 * chunk (heartbeat, lock refresh). With `expected` (the chunks a committed metadata.json names: a retry after
 * a crash before its PUT) the file is cut where they say and each chunk must be the one named.
 */
export async function uploadChunks(
  s3: S3Client,
  bucket: string,
  file: string,
  f: { path: string; size: number },
  counters: ChunkCounters,
  concurrency: number,
  tick: (doneBytes: number) => Promise<void>,
  expected?: ChunkRef[],
): Promise<ChunkRef[]> {
  const refs: ChunkRef[] = [];
  const pending = new Map<string, Promise<void>>();
  const inflight = new Set<Promise<void>>();
  let failure: { error: unknown } | null = null;
  const splitter = new ChunkSplitter();
  // With `expected` (a metadata.json already committed), the recorded sizes say where the chunks are.
  let carry: Buffer = Buffer.alloc(0);
  const cut = (block: Buffer, end = false): Buffer[] => {
    if (!expected) return splitter.push(block);
    let data = carry.length > 0 ? Buffer.concat([carry, block]) : block;
    const out: Buffer[] = [];
    for (let i = refs.length; i < expected.length && data.length >= expected[i].size; i++) {
      out.push(data.subarray(0, expected[i].size));
      data = data.subarray(expected[i].size);
    }
    carry = data;
    if (end && data.length > 0) out.push(data);
    return out;
  };
  const take = async (chunk: Buffer): Promise<void> => {
    const sha256 = createHash('sha256').update(chunk).digest('hex');
    const want = expected?.[refs.length];
    if (expected && want?.sha256 !== sha256)
      throw ApplicationFailure.nonRetryable(
        `${f.path}: chunk ${refs.length} has sha256 ${sha256} locally, metadata.json says ${want?.sha256 ?? 'none'}: changed after sealing`,
        ErrorType.ChecksumMismatch,
      );
    refs.push({ sha256, size: chunk.length });
    if (pending.has(sha256)) {
      counters.chunksReused++;
      counters.bytesReused += chunk.length;
      await tick(chunk.length);
      return;
    }
    const storing: Promise<void> = putChunk(s3, bucket, sha256, chunk)
      .then(
        async (how) => {
          if (how === 'sent') {
            counters.chunksSent++;
            counters.bytesSent += chunk.length;
          } else {
            counters.chunksReused++;
            counters.bytesReused += chunk.length;
          }
          await tick(chunk.length);
        },
        (error: unknown) => {
          failure ??= { error };
        },
      )
      .finally(() => inflight.delete(storing));
    pending.set(sha256, storing);
    inflight.add(storing);
    // Reading runs at most `concurrency` chunks ahead of the slowest store, so memory stays bounded.
    if (inflight.size >= concurrency) await Promise.race(inflight);
  };
  let offset = 0;
  const fh = await fs.promises.open(file, 'r');
  try {
    while (offset < f.size && !failure) {
      const block = await readAt(fh, offset, Math.min(CHUNK_MAX, f.size - offset));
      if (block.length === 0) break;
      offset += block.length;
      for (const chunk of cut(block)) if (!failure) await take(chunk);
    }
    if (!failure) for (const chunk of expected ? cut(Buffer.alloc(0), true) : splitter.end()) await take(chunk);
    await Promise.all(inflight);
  } finally {
    await fh.close();
  }
  if (failure) throw (failure as { error: unknown }).error;
  if (offset !== f.size)
    throw ApplicationFailure.nonRetryable(
      `${f.path}: ${offset} bytes read, sealed as ${f.size}: changed after sealing; not committed`,
      ErrorType.ChecksumMismatch,
    );
  return refs;
}
