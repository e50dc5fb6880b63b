import * as fs from 'node:fs';
import { CHUNK_MAX } from '../chunking';

/**
 * Buffers of one size, reused: a fresh 8 MiB buffer for every read, and a copy of each read joined to what the
 * last one left, cost more than the hashing (profiled on an upload whose chunks S3 already held: garbage
 * collection 26% and Buffer.concat 12% of the event loop). Taking one waits while all are in use, which is
 * also what bounds the chunks in flight.
 */
export class BufferPool {
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

/** Where the next chunk ends: its length in `window` (the bytes from the last cut); `atEnd` when no more follow. */
export type CutAt = (window: Buffer, atEnd: boolean, index: number, offset: number) => number;

/**
 * Reads `size` bytes of `file` once, in order, as chunks: a window of CHUNK_MAX bytes from where the last chunk
 * ended, cut where `cut` says; the rest of the window moves to the front of the next one. Each chunk goes to
 * `each` in a buffer from `pool` that it must hand back with `release` (at once, or when the chunk is stored).
 * The one reader behind both the upload's seal (upload-chunks.ts) and the disk tier's (seal.ts), so that the
 * two cut a file into the same chunks. Returns the bytes and chunks read: fewer bytes than `size` when the file
 * ended early (the caller reports it), or when `stopped` said so between chunks. A `cut` that throws ends the
 * read with its error.
 */
export async function readChunks(
  file: string,
  size: number,
  pool: BufferPool,
  cut: CutAt,
  each: (index: number, chunk: Buffer, release: () => void) => void,
  stopped: () => boolean = () => false,
): Promise<{ bytes: number; chunks: number }> {
  let buf = await pool.take();
  let have = 0; // bytes of the window in buf, from file offset `pos`
  let pos = 0;
  let chunks = 0;
  const fh = await fs.promises.open(file, 'r');
  try {
    while (!stopped() && pos < size) {
      const want = Math.min(CHUNK_MAX, size - pos);
      while (have < want) {
        const { bytesRead } = await fh.read(buf, have, want - have, pos + have);
        if (bytesRead === 0) break;
        have += bytesRead;
      }
      if (have === 0) break; // shorter than `size`: the caller sees bytes < size
      const n = cut(buf.subarray(0, have), have < want || pos + have === size, chunks, pos);
      const next = await pool.take();
      buf.copy(next, 0, n, have);
      const mine = buf;
      each(chunks++, mine.subarray(0, n), () => pool.give(mine));
      buf = next;
      have -= n;
      pos += n;
    }
  } finally {
    pool.give(buf);
    await fh.close();
  }
  return { bytes: pos, chunks };
}
