/**
 * Where a checkpoint file is cut into content-addressed chunks (format v2). Pure: no I/O.
 *
 * Why the cuts are stable: CRIU's pages images are the process's present pages, 4 KiB each, in page-map
 * (address) order, so a page that appears or vanishes shifts every byte after it by a multiple of 4 KiB, and a
 * changed page changes 4 KiB in place. Cuts fall only on page boundaries, and whether a cut follows a page
 * depends on that page's own content (a fingerprint of it), never on its offset in the file. An unchanged run
 * of memory therefore yields the same cuts and the same chunks wherever it lands in the image; a change
 * disturbs the chunk it falls in and, at most, the cut points up to the next content-defined cut after it.
 * Chunks are at least CHUNK_MIN (few requests per GiB) and at most CHUNK_MAX (a run whose pages never match,
 * e.g. one repeated page, is cut every CHUNK_MAX, which still repeats the same chunk).
 */

export const PAGE = 4096;
export const CHUNK_MIN = 2 << 20;
export const CHUNK_MAX = 8 << 20;
/** A page ends a chunk (once CHUNK_MIN is reached) when its fingerprint has these bits set: 1 page in 512. */
const CUT_BITS = 0x1ff;

/**
 * A page's fingerprint: 16 words, 256 bytes apart, mixed (FNV-1a over words). Sampling keeps the scan at
 * memory speed (a full CRC of every page costs about a second per 4 GiB of the two cores here); a change the
 * samples miss only leaves a cut where it was, which is what stability wants anyway.
 */
export function pageFingerprint(b: Buffer, off: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < 16; i++) h = Math.imul(h ^ b.readUInt32LE(off + i * 256), 0x01000193);
  return (h ^ (h >>> 15)) >>> 0;
}

/**
 * The length of the first chunk of `data` (which starts at a chunk boundary), or null when `data` ends before
 * a cut and more bytes may follow. At the end of the file (`final`), whatever is left is the last chunk.
 */
export function firstCut(data: Buffer, final: boolean): number | null {
  const pages = Math.floor(Math.min(data.length, CHUNK_MAX) / PAGE);
  for (let p = CHUNK_MIN / PAGE - 1; p < pages; p++) {
    if ((p + 1) * PAGE === CHUNK_MAX) return CHUNK_MAX;
    if ((pageFingerprint(data, p * PAGE) & CUT_BITS) === CUT_BITS) return (p + 1) * PAGE;
  }
  if (final) return data.length > 0 ? Math.min(data.length, CHUNK_MAX) : null;
  return null;
}

/**
 * Splits a stream of blocks into chunks, views of the blocks (copied only where a chunk spans blocks). Bytes
 * are held until CHUNK_MAX of them are there, so any cut is found with the pages that decide it in hand.
 */
export class ChunkSplitter {
  private held: Buffer[] = [];
  private heldBytes = 0;

  /** The chunks completed by this block; the rest is kept for the next. */
  push(block: Buffer): Buffer[] {
    this.held.push(block);
    this.heldBytes += block.length;
    if (this.heldBytes < CHUNK_MAX) return [];
    let data = this.held.length === 1 ? this.held[0] : Buffer.concat(this.held);
    const out: Buffer[] = [];
    while (data.length >= CHUNK_MAX) {
      const n = firstCut(data, false)!;
      out.push(data.subarray(0, n));
      data = data.subarray(n);
    }
    this.held = [data];
    this.heldBytes = data.length;
    return out;
  }

  /** The last chunks, at the end of the file. */
  end(): Buffer[] {
    const out: Buffer[] = [];
    let data = Buffer.concat(this.held);
    for (let n = firstCut(data, true); n !== null; n = firstCut(data, true)) {
      out.push(data.subarray(0, n));
      data = data.subarray(n);
    }
    this.held = [];
    this.heldBytes = 0;
    return out;
  }
}

/** Every chunk of a buffer, as the upload cuts a file of these bytes (unit tests and tools). */
export function chunksOf(data: Buffer): Buffer[] {
  const s = new ChunkSplitter();
  return [...s.push(data), ...s.end()];
}
