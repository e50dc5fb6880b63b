import * as fs from 'node:fs';
import type { S3Client } from '@aws-sdk/client-s3';
import { ApplicationFailure } from '@temporalio/activity';
import { ErrorType } from '../../common/errors';
import type { ChunkRef } from '../../common/metadata';
import { CHUNK_MAX, firstCut } from '../chunking';
import { putChunk } from '../chunk-store';
import { BufferPool, type CutAt, readChunks } from './chunk-reader';
import { sha256Hex } from './seal';

/** What a chunked upload moved: bytes and chunks sent, and those the bucket already held (not sent again). */
export interface ChunkCounters {
  bytesSent: number;
  chunksSent: number;
  bytesReused: number;
  chunksReused: number;
}

/** `length` bytes of the file from `offset`, or fewer at its end: in `buf` when given (at least `length` long). */
export async function readAt(
  fh: fs.promises.FileHandle,
  offset: number,
  length: number,
  buf: Buffer = Buffer.allocUnsafe(length),
): Promise<Buffer> {
  let got = 0;
  while (got < length) {
    const { bytesRead } = await fh.read(buf, got, length - got, offset + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return buf.subarray(0, got);
}

/**
 * One file as content-addressed chunks: one read goes through it in order, a window of CHUNK_MAX bytes from
 * where the last chunk ended, cut where activities/chunking.ts says (the rest of the window moves to the front
 * of the next one), and each chunk is hashed (its SHA-256 is its key) and stored unless S3 already holds it
 * as verified (putChunk); up to `concurrency` chunks are in flight behind the read. This read is the file's
 * seal: the returned list, in order, is what metadata.json records. A chunk twice in one file is sent once. A
 * file shorter than sealed is ChecksumMismatch (the caller also checks it was not written meanwhile). `tick`
 * runs after each chunk (heartbeat, lock refresh). With `expected` (the chunks a committed metadata.json
 * names: a retry after a crash before its PUT) the file is cut where they say and each chunk must be the one
 * named.
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
  const changed = (what: string): ApplicationFailure =>
    ApplicationFailure.nonRetryable(
      `${f.path}: ${what}: changed after sealing; not committed`,
      ErrorType.ChecksumMismatch,
    );
  // Each chunk is stored on its own promise; its place in `refs` is fixed when it is cut, so the list keeps the
  // file's order whatever finishes first.
  const store = async (i: number, chunk: Buffer): Promise<void> => {
    const sha256 = sha256Hex(chunk);
    const want = expected?.[i];
    if (expected && want?.sha256 !== sha256)
      throw changed(`chunk ${i} has sha256 ${sha256} locally, metadata.json says ${want?.sha256 ?? 'none'}`);
    refs[i] = { sha256, size: chunk.length };
    // Looked up and registered with no await between: the second of two equal chunks finds the first's store.
    const earlier = pending.get(sha256);
    if (earlier) {
      await earlier;
      counters.chunksReused++;
      counters.bytesReused += chunk.length;
      await tick(chunk.length);
      return;
    }
    const storing = putChunk(s3, bucket, sha256, chunk).then(async (how) => {
      if (how === 'sent') {
        counters.chunksSent++;
        counters.bytesSent += chunk.length;
      } else {
        counters.chunksReused++;
        counters.bytesReused += chunk.length;
      }
      await tick(chunk.length);
    });
    pending.set(sha256, storing);
    await storing;
  };
  const cut: CutAt = (window, atEnd, i, offset) => {
    if (!expected) return firstCut(window, atEnd)!;
    const e = expected[i];
    if (!e || e.size > window.length)
      throw changed(
        `chunk ${i} ${e ? `of ${e.size} bytes ends past` : 'is not named, yet bytes follow at'} offset ${offset + window.length}`,
      );
    return e.size;
  };
  let read = { bytes: 0, chunks: 0 };
  try {
    read = await readChunks(
      file,
      f.size,
      new BufferPool(concurrency + 1, CHUNK_MAX),
      cut,
      (i, chunk, release) => {
        const done: Promise<void> = store(i, chunk)
          .catch((error: unknown) => {
            failure ??= { error };
          })
          .finally(() => {
            inflight.delete(done);
            release();
          });
        inflight.add(done);
      },
      () => failure !== null,
    );
  } catch (error) {
    failure ??= { error };
  }
  await Promise.all(inflight);
  if (failure) throw (failure as { error: unknown }).error;
  if (read.bytes !== f.size) throw changed(`${read.bytes} bytes read, sealed as ${f.size}`);
  if (expected && read.chunks !== expected.length)
    throw changed(`${read.chunks} chunks read, metadata.json names ${expected.length}`);
  return refs;
}
