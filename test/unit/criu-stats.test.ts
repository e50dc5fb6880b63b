import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readDumpStats } from '../../activities/node/criu-stats';
import { BIN } from '../../deploy/local/paths';
import { stack } from '../support/stack';

/**
 * CRIU's own figures for a dump (its stats-dump image), read from a real dump: how long the process stood
 * frozen is what a --leave-running checkpoint costs the workload. A file we cannot read gives no figures,
 * never an error: they inform, they do not decide.
 */
let root: string;
beforeAll(() => {
  root = fs.mkdtempSync(path.join(stack().home, 'criu-stats-'));
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

describe('readDumpStats', () => {
  test("a real --leave-running dump: CRIU's frozen time and pages, the process running on", () => {
    const p = spawn('sleep', ['600'], { detached: true, stdio: 'ignore' });
    try {
      const dir = path.join(root, 'dump');
      fs.mkdirSync(dir);
      execFileSync(BIN.criu, ['dump', '-t', String(p.pid), '-D', dir, '-o', 'dump.log', '--leave-running']);
      const s = readDumpStats(dir);
      expect(s).not.toBeNull();
      expect(s!.frozenMs).toBeGreaterThan(0);
      expect(s!.frozenMs).toBeGreaterThanOrEqual(s!.memdumpMs);
      expect(s!.pagesWritten).toBeGreaterThan(0);
      expect(s!.pagesScanned).toBeGreaterThanOrEqual(s!.pagesWritten);
      expect(p.exitCode).toBeNull();
      expect(() => process.kill(p.pid!, 0)).not.toThrow();
    } finally {
      p.kill('SIGKILL');
    }
  });

  test('no stats-dump, another image, a cut or garbled one: no figures', () => {
    const dir = path.join(root, 'bad');
    fs.mkdirSync(dir);
    expect(readDumpStats(dir)).toBeNull();
    const header = Buffer.alloc(12);
    header.writeUInt32LE(0x55105940, 0);
    header.writeUInt32LE(0x57093306, 4);
    const file = path.join(dir, 'stats-dump');
    const cases: [string, Buffer][] = [
      ['another image magic', Buffer.concat([Buffer.from([0x40, 0x59, 0x10, 0x55, 0, 0, 0, 0]), Buffer.alloc(8)])],
      ['header cut short', header.subarray(0, 6)],
      [
        'length past the end',
        (() => {
          const b = Buffer.from(header);
          b.writeUInt32LE(100, 8);
          return b;
        })(),
      ],
      [
        'not protobuf',
        (() => {
          const b = Buffer.concat([header, Buffer.from([0xff, 0xff, 0xff, 0xff])]);
          b.writeUInt32LE(4, 8);
          return b;
        })(),
      ],
      ['no dump entry', header],
    ];
    for (const [what, bytes] of cases) {
      fs.writeFileSync(file, bytes);
      expect({ what, stats: readDumpStats(dir) }).toEqual({ what, stats: null });
    }
  });
});
