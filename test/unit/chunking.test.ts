import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ApplicationFailure } from '@temporalio/activity';
import { CHUNK_MAX, CHUNK_MIN, chunksOf, PAGE } from '../../activities/chunking';
import { chunkRefsOfFile } from '../../activities/node/seal';
import { ErrorType } from '../../common/errors';

/** Page-aligned content-defined chunking (format v2): cuts that unchanged memory keeps wherever it lands. */
const MiB = 1 << 20;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const names = (b: Buffer): string[] => chunksOf(b).map(sha);

/** Memory as CRIU writes it: whole pages, each unique (random), `pages` of them. */
const memory = (pages: number): Buffer => randomBytes(pages * PAGE);

describe('chunking', () => {
  const base = memory((48 * MiB) / PAGE);

  test('chunks cover the file exactly, within the size bounds, on page boundaries', () => {
    const chunks = chunksOf(base);
    expect(Buffer.concat(chunks).equals(base)).toBe(true);
    expect(chunks.length).toBeGreaterThan(48 / 8);
    for (const c of chunks.slice(0, -1)) {
      expect(c.length).toBeGreaterThanOrEqual(CHUNK_MIN);
      expect(c.length).toBeLessThanOrEqual(CHUNK_MAX);
      expect(c.length % PAGE).toBe(0);
    }
  });

  test('a cut depends only on the bytes after the last one: chunking from any cut gives the same chunks after it', () => {
    const chunks = chunksOf(base);
    for (const k of [1, 3, chunks.length - 1]) {
      const from = chunks.slice(0, k).reduce((n, c) => n + c.length, 0);
      expect(chunksOf(base.subarray(from)).map(sha)).toEqual(chunks.slice(k).map(sha));
    }
  });

  test('a page changed in place changes only the chunk it is in (and at most the next)', () => {
    const changed = Buffer.from(base);
    const at = 20 * MiB + 5 * PAGE;
    randomBytes(PAGE).copy(changed, at);
    const before = new Set(names(base));
    const after = names(changed);
    expect(after.filter((n) => !before.has(n)).length).toBeLessThanOrEqual(2);
    expect(after.filter((n) => !before.has(n)).length).toBeGreaterThanOrEqual(1);
  });

  test('pages that appear or vanish shift the image, yet the chunks after the next cut are the same', () => {
    const inserted = Buffer.concat([base.subarray(0, 10 * MiB), memory(3), base.subarray(10 * MiB)]);
    const removed = Buffer.concat([base.subarray(0, 30 * MiB), base.subarray(30 * MiB + 7 * PAGE)]);
    const before = names(base);
    for (const shifted of [inserted, removed]) {
      const after = names(shifted);
      const fresh = after.filter((n) => !before.includes(n));
      // Fixed-size chunks would change every chunk after the shift (more than half of them here).
      expect(fresh.length).toBeLessThanOrEqual(3);
      expect(after.length - fresh.length).toBeGreaterThanOrEqual(before.length - 3);
    }
  });

  test('a contiguous 5% of the memory rewritten changes about 5% of the bytes stored', () => {
    const big = memory((96 * MiB) / PAGE);
    const changed = Buffer.from(big);
    randomBytes(big.length / 20).copy(changed, 40 * MiB);
    const before = new Set(names(big));
    const fresh = chunksOf(changed).filter((c) => !before.has(sha(c)));
    const freshBytes = fresh.reduce((n, c) => n + c.length, 0);
    expect(freshBytes).toBeGreaterThanOrEqual(big.length / 20);
    expect(freshBytes).toBeLessThanOrEqual(big.length / 20 + 3 * CHUNK_MAX);
  });

  test('memory whose pages differ in a few bytes and repeat a pattern elsewhere keeps its chunks behind any prefix', () => {
    // As pattern.py's buffer (and arrays of records) look: one 32-byte block repeated, each page's index in 8
    // bytes 16 bytes into the page (after malloc's header). A fingerprint that samples words 256 bytes apart
    // sees every such page alike and cuts the run every CHUNK_MAX from the prefix's last cut: nothing shared.
    const block = createHash('sha256').update('replica').digest();
    const run = Buffer.alloc(96 * MiB);
    for (let o = 0; o < run.length; o += block.length) block.copy(run, o);
    for (let p = 0; p < run.length / PAGE; p++) run.writeBigUInt64LE(BigInt(p), p * PAGE + 16);
    const one = new Set(names(Buffer.concat([memory(3), run])));
    const other = chunksOf(Buffer.concat([memory(700), run, memory(5)]));
    const shared = other.filter((c) => one.has(sha(c))).reduce((n, c) => n + c.length, 0);
    // All but the chunks at the run's two edges, which also hold the prefix or the suffix.
    expect(shared).toBeGreaterThanOrEqual(run.length - 2 * CHUNK_MAX);
  });

  test('a run of one repeated page is cut the same way each time: the repeats are one chunk', () => {
    const page = randomBytes(PAGE);
    const same = Buffer.concat(Array.from({ length: (40 * MiB) / PAGE }, () => page));
    const n = new Set(names(same.subarray(0, 32 * MiB)));
    expect(n.size).toBe(1);
  });

  test('a file that is not whole pages, or smaller than a chunk, is one last chunk', () => {
    expect(chunksOf(Buffer.alloc(0))).toEqual([]);
    const odd = randomBytes(CHUNK_MIN / 2 + 17);
    expect(chunksOf(odd).map(sha)).toEqual([sha(odd)]);
  });

  test("a full seal's chunks of a file are the upload's: the same cuts, named by their SHA-256; a file cut short is refused", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chunk-refs-'));
    try {
      const file = path.join(dir, 'pages-1.img');
      const data = Buffer.concat([base, memory(3), randomBytes(100)]); // not whole pages at its end
      fs.writeFileSync(file, data);
      const refs = await chunkRefsOfFile(file, data.length);
      expect(refs).toEqual(chunksOf(data).map((c) => ({ sha256: sha(c), size: c.length })));
      expect(refs.length).toBeGreaterThan(5);
      const short = await chunkRefsOfFile(file, data.length + PAGE).then(
        () => null,
        (e: unknown) => e,
      );
      expect(short).toBeInstanceOf(ApplicationFailure);
      expect((short as ApplicationFailure).type).toBe(ErrorType.ChecksumMismatch);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
