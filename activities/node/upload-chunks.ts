import * as fs from 'node:fs';
import type { S3Client } from '@aws-sdk/client-s3';
import { ApplicationFailure } from '@temporalio/activity';
import { ErrorType } from '../../common/errors';
import type { ChunkRef } from '../../common/metadata';
import { CHUNK_MAX, firstCut } from '../chunking';
import { putChunk } from '../chunk-store';
import { sha256Hex } from './seal';

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
 * Buffers of one size, reused: a fresh 8 MiB buffer for every read, and a copy of each read joined to what the
 * last one left, cost more than the hashing (profiled on an upload whose chunks S3 already held: garbage
 * collection 26% and Buffer.concat 12% of the event loop). Taking one waits while all are in use, which is
 * also what bounds the chunks in flight.
 */
class BufferPool {
  private readonly free: Buffer[] = [];
  private readonly waiting: ((b: Buffer) => void)[] = [];
  private made = 0;

  constructor(
    private readonly count: number,
    private readonly size: number,
  ) {}

  take(): Promise<Buffer> {
    const b = this.free.pop();
    if (b) return Promise.resolve(b);
    if (this.made < this.count) {
      this.made++;
      return Promise.resolve(Buffer.allocUnsafeSlow(this.size));
    }
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  give(b: Buffer): void {
    const next = this.waiting.shift();
    if (next) next(b);
    else this.free.push(b);
  }
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
  const pool = new BufferPool(concurrency + 1, CHUNK_MAX);
  let buf = await pool.take();
  let have = 0; // bytes of the window in buf, from file offset `pos`
  let pos = 0;
  let cuts = 0;
  const fh = await fs.promises.open(file, 'r');
  try {
    while (!failure && pos < f.size) {
      const want = Math.min(CHUNK_MAX, f.size - pos);
      while (have < want) {
        const { bytesRead } = await fh.read(buf, have, want - have, pos + have);
        if (bytesRead === 0) break;
        have += bytesRead;
      }
      if (have === 0) break; // shorter than sealed: reported below
      let n: number;
      if (expected) {
        const e = expected[cuts];
        if (!e || e.size > have) {
          failure ??= {
            error: changed(
              `chunk ${cuts} ${e ? `of ${e.size} bytes ends past` : 'is not named, yet bytes follow at'} offset ${pos + have}`,
            ),
          };
          break;
        }
        n = e.size;
      } else n = firstCut(buf.subarray(0, have), have < want || pos + have === f.size)!;
      const next = await pool.take();
      buf.copy(next, 0, n, have);
      const mine = buf;
      const done: Promise<void> = store(cuts++, mine.subarray(0, n))
        .catch((error: unknown) => {
          failure ??= { error };
        })
        .finally(() => {
          inflight.delete(done);
          pool.give(mine);
        });
      inflight.add(done);
      buf = next;
      have -= n;
      pos += n;
    }
    pool.give(buf);
    await Promise.all(inflight);
  } finally {
    await fh.close();
  }
  if (failure) throw (failure as { error: unknown }).error;
  if (pos !== f.size) throw changed(`${pos} bytes read, sealed as ${f.size}`);
  if (expected && cuts !== expected.length)
    throw changed(`${cuts} chunks read, metadata.json names ${expected.length}`);
  return refs;
}
