import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { writevAt } from '../../activities/node/fetch-chunks';

/**
 * The chunk fetch writes each chunk's HTTP body buffers with positional writevs. A writev may write less than
 * asked (a signal, a full pipe of the page cache) and takes at most IOV_MAX buffers: neither may lose or move
 * a byte. A real file; the short writes come from a handle that writes at most `cap` bytes per call.
 */
let dir: string;
beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'writev-at-'));
});
afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

const parts = (n: number): Buffer[] => Array.from({ length: n }, (_, i) => Buffer.alloc((i * 7919) % 3001, i % 251)); // some empty, sizes uneven

async function written(bufs: Buffer[], offset: number, cap: number): Promise<{ file: Buffer; calls: number[] }> {
  const file = path.join(dir, 'f');
  fs.writeFileSync(file, Buffer.alloc(offset, 0xee));
  const fh = await fs.promises.open(file, 'r+');
  const calls: number[] = [];
  const short = {
    writev: async (b: Buffer[], position: number) => {
      calls.push(b.length);
      let room = cap;
      const taken: Buffer[] = [];
      for (const x of b) {
        if (room === 0) break;
        taken.push(x.subarray(0, Math.min(room, x.length)));
        room -= taken[taken.length - 1].length;
      }
      return fh.writev(taken, position);
    },
  } as unknown as fs.promises.FileHandle;
  try {
    await writevAt(short, bufs, offset);
  } finally {
    await fh.close();
  }
  return { file: fs.readFileSync(file), calls };
}

test('more buffers than one writev takes: every byte lands in order at the offset', async () => {
  const bufs = parts(2500);
  const { file, calls } = await written(bufs, 4096, Number.MAX_SAFE_INTEGER);
  expect(file.subarray(0, 4096).every((b) => b === 0xee)).toBe(true);
  expect(file.subarray(4096).equals(Buffer.concat(bufs))).toBe(true);
  expect(Math.max(...calls)).toBeLessThanOrEqual(1024);
});

test('short writes, cut inside a buffer: the rest is written from where each stopped', async () => {
  const bufs = parts(300);
  const { file, calls } = await written(bufs, 100, 4099);
  expect(file.subarray(100).equals(Buffer.concat(bufs))).toBe(true);
  expect(calls.length).toBeGreaterThan(Buffer.concat(bufs).length / 4099 - 1);
});
