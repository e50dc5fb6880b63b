import * as fs from 'node:fs';
import * as path from 'node:path';
import type { NodeContext } from '../../activities/node/context';
import { type OwnerState, sweepOrphans } from '../../activities/node/orphans';
import { restoreAttemptId, restoreOfAttempt } from '../../common/restore';
import { metadataFor, writeSealed } from '../support/checkpoint-files';
import { localNodeContext, stack } from '../support/stack';

/**
 * The agent's start-up sweep of copies in memory (the staging directory, a tmpfs) that a crash or a terminated
 * workflow left: each holds memory until removed. Real directories; the owner lookup is the test's (the e2e
 * suites sweep against Temporal itself).
 */
let root: string;
let ctx: NodeContext;
const files = { 'images/pages-1.img': Buffer.alloc(8192, 7), 'images/core-1.img': Buffer.alloc(512, 1) };

beforeEach(() => {
  root = fs.mkdtempSync(path.join(stack().home, 'orphan-copies-'));
  ctx = {
    ...localNodeContext(`orphan-copies-${process.pid}`, path.join(root, 'data')),
    stagingDir: path.join(root, 'shm'),
  };
});
afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

const staging = (name: string): string => path.join(ctx.stagingDir!, name);
const disk = (id: string): string => path.join(ctx.dataDir, 'checkpoints', id);
/** Sealed as the checkpoint `id` of `job`: the same metadata.json wherever that checkpoint is copied. */
const sealed = new Map<string, ReturnType<typeof metadataFor>>();
const seal = (dir: string, id: string, job = 'job-orphans'): void => {
  const key = `${id}/${job}`;
  if (!sealed.has(key)) sealed.set(key, metadataFor(id, job, ctx.node, files));
  writeSealed(dir, sealed.get(key)!, files);
};

test('a restore attempt id names its restore workflow, and only a readable one does', () => {
  const id = restoreAttemptId('restore/ck-x.r1.a1/7', 'run-id', 2);
  expect(id).toBe('ck-x.r1.a1.r7.a2');
  expect(restoreOfAttempt(id)).toEqual({ checkpointId: 'ck-x.r1.a1', workflowId: 'restore/ck-x.r1.a1/7' });
  expect(restoreOfAttempt(restoreAttemptId('elsewhere/ck', '0b3f-9a', 1))).toBeNull();
});

test('copies in memory whose owner is closed are removed when they are not the only copy; the rest stay', async () => {
  seal(staging('ck-a'), 'ck-a'); // staged, and the same checkpoint on disk: a copy of a copy
  seal(disk('ck-a'), 'ck-a');
  seal(staging('ck-b'), 'ck-b'); // staged, nothing on disk: maybe the only copy
  seal(staging('ck-c'), 'ck-c'); // staged, a different checkpoint of that id on disk
  seal(disk('ck-c'), 'ck-c', 'another-job');
  seal(staging('ck-a.restore-ck-a.r2.a1'), 'ck-a'); // a restore attempt's own copy, its restore closed
  seal(staging('ck-d.restore-ck-d.r1.a1'), 'ck-d'); // its restore still open
  fs.mkdirSync(staging('ck-e.restore-ck-e.r3.a2.fetch/images'), { recursive: true }); // a download cut short
  seal(staging('ck-f.restore'), 'ck-f'); // the shared copy of older restores: no owner to ask
  seal(staging('ck-g.restore-run-0b3f.a1'), 'ck-g'); // an attempt named by its run id: no owner to ask
  const states: Record<string, OwnerState> = {
    'checkpoint/ck-a': 'closed',
    'restore/ck-a/2': 'closed',
    'restore/ck-d/1': 'open',
    'restore/ck-e/3': 'not-found',
  };
  const asked: string[] = [];
  const report = await sweepOrphans(ctx, async (id) => {
    asked.push(id);
    const s = states[id];
    if (!s) throw new Error(`not expected to be asked: ${id}`);
    return s;
  });
  expect(report.skipped).toBeNull();
  expect(asked.sort()).toEqual(Object.keys(states).sort());
  expect(report.removed.map((r) => [r.kind, r.id, path.basename(r.detail)]).sort()).toEqual(
    [
      ['staged-copy', 'ck-a', 'ck-a'],
      ['restore-copy', 'ck-a', 'ck-a.restore-ck-a.r2.a1'],
      ['restore-copy', 'ck-e', 'ck-e.restore-ck-e.r3.a2.fetch'],
    ].sort(),
  );
  expect(fs.readdirSync(ctx.stagingDir!).sort()).toEqual(
    ['ck-b', 'ck-c', 'ck-d.restore-ck-d.r1.a1', 'ck-f.restore', 'ck-g.restore-run-0b3f.a1'].sort(),
  );
  // The disk copies are never touched by this part of the sweep.
  expect(fs.readdirSync(path.join(ctx.dataDir, 'checkpoints')).sort()).toEqual(['ck-a', 'ck-c']);
});

test('an owner Temporal cannot answer for: no copy is removed', async () => {
  seal(staging('ck-a'), 'ck-a');
  seal(disk('ck-a'), 'ck-a');
  seal(staging('ck-a.restore-ck-a.r1.a1'), 'ck-a');
  const report = await sweepOrphans(ctx, async (id) => {
    if (id.startsWith('restore/')) throw new Error('deadline exceeded');
    return 'closed';
  });
  expect(report.skipped).toMatch(/deadline exceeded/);
  expect(report.removed).toEqual([]);
  expect(fs.readdirSync(ctx.stagingDir!).sort()).toEqual(['ck-a', 'ck-a.restore-ck-a.r1.a1']);
});

test("a restore attempt's download beside the disk copy is removed once its restore is closed; unnamed ones stay", async () => {
  seal(disk('ck.v1'), 'ck.v1'); // the disk copy itself: complete, never touched
  fs.mkdirSync(disk('ck.v1.ck.v1.r2.a1.fetch/images'), { recursive: true }); // cut short, its restore closed
  fs.mkdirSync(disk('ck.v1.ck.v1.r3.a1.fetch/images'), { recursive: true }); // its restore still downloading
  seal(disk('ck-h.ck-h.r1.a4.fetch'), 'ck-h'); // complete but never renamed: the restore died in between
  fs.mkdirSync(disk('ck-i.fetch/images'), { recursive: true }); // an older restore's, named by no attempt
  fs.mkdirSync(disk('ck-j.ck-x.r1.a1.fetch'), { recursive: true }); // an attempt of another checkpoint: not a download of ck-j
  const states: Record<string, OwnerState> = {
    'restore/ck.v1/2': 'closed',
    'restore/ck.v1/3': 'open',
    'restore/ck-h/1': 'not-found',
  };
  const asked: string[] = [];
  const report = await sweepOrphans(ctx, async (id) => {
    asked.push(id);
    const s = states[id];
    if (!s) throw new Error(`not expected to be asked: ${id}`);
    return s;
  });
  expect(report.skipped).toBeNull();
  expect(report.removed.map((r) => [r.kind, r.id, path.basename(r.detail)]).sort()).toEqual(
    [
      ['restore-fetch', 'ck.v1', 'ck.v1.ck.v1.r2.a1.fetch'],
      ['restore-fetch', 'ck-h', 'ck-h.ck-h.r1.a4.fetch'],
    ].sort(),
  );
  expect(fs.readdirSync(path.join(ctx.dataDir, 'checkpoints')).sort()).toEqual(
    ['ck.v1', 'ck.v1.ck.v1.r3.a1.fetch', 'ck-i.fetch', 'ck-j.ck-x.r1.a1.fetch'].sort(),
  );
  expect(asked.sort()).toEqual(Object.keys(states).sort());
});
