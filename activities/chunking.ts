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
/** Bound once: a global looked up per word costs a hundredfold inside a vm context (jest's), 1024 times a page. */
const imul = Math.imul;

/**
 * A page's fingerprint: every 32-bit word of it, in two interleaved multiply-xor lanes, then a finaliser
 * (murmur3's fmix32) so that the cut bits depend on every bit of the page. It must read the whole page:
 * memory is full of pages that differ in a few bytes and repeat a pattern elsewhere (arrays of records,
 * padded tensors, a page index beside a repeated block). A fingerprint of sampled words gives all such pages
 * one value, so a long run of them is cut every CHUNK_MAX counted from whatever cut came before the run, and
 * the same memory behind a different prefix (another process, a page more in front) shares no chunk at all.
 * Cost: about 6.5 GB/s per core here, and only the pages past CHUNK_MIN in each chunk are looked at (about
 * half), against SHA-256 at 1.75 GB/s over every byte. Word order is the host's (little-endian everywhere we
 * run); a big-endian host would cut differently, which costs only deduplication against other hosts.
 */
export function pageFingerprint(words: Int32Array, firstWord: number): number {
  let h = 0x811c9dc5;
  let g = 0x01000193;
  const end = firstWord + PAGE / 4;
  for (let i = firstWord; i < end; i += 2) {
    h = imul(h ^ words[i], 0x01000193);
    g = imul(g ^ words[i + 1], 0x5bd1e995);
  }
  h ^= (g << 16) | (g >>> 16);
  h = imul(h ^ (h >>> 16), 0x85ebca6b);
  h = imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** The buffer as 32-bit words (a copy only in the rare case that it does not start on a 4-byte boundary). */
function wordsOf(data: Buffer): Int32Array {
  const b = data.byteOffset % 4 === 0 ? data : Buffer.from(data);
  return new Int32Array(b.buffer, b.byteOffset, Math.floor(b.length / 4));
}

/**
 * The length of the first chunk of `data` (which starts at a chunk boundary), or null when `data` ends before
 * a cut and more bytes may follow. At the end of the file (`final`), whatever is left is the last chunk.
 */
export function firstCut(data: Buffer, final: boolean): number | null {
  const pages = Math.floor(Math.min(data.length, CHUNK_MAX) / PAGE);
  const words = pages >= CHUNK_MIN / PAGE ? wordsOf(data.subarray(0, pages * PAGE)) : new Int32Array(0);
  for (let p = CHUNK_MIN / PAGE - 1; p < pages; p++) {
    if ((p + 1) * PAGE === CHUNK_MAX) return CHUNK_MAX;
    if ((pageFingerprint(words, (p * PAGE) / 4) & CUT_BITS) === CUT_BITS) return (p + 1) * PAGE;
  }
  if (final) return data.length > 0 ? Math.min(data.length, CHUNK_MAX) : null;
  return null;
}

/**
 * Every chunk of a buffer, as the upload cuts a file of these bytes: each cut is the first one in the CHUNK_MAX
 * bytes after the last (upload-chunks.ts reads the file the same way, a window at a time).
 */
export function chunksOf(data: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let pos = 0; pos < data.length;) {
    const window = data.subarray(pos, pos + CHUNK_MAX);
    const n = firstCut(window, pos + window.length === data.length)!;
    out.push(window.subarray(0, n));
    pos += n;
  }
  return out;
}
