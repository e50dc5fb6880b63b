import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { restoreLocation, type NodeContext } from '../../activities/node/context';
import { fetchCheckpoint } from '../../activities/node/fetch';
import { persistCheckpoint } from '../../activities/node/persist';
import { uploadCheckpoint } from '../../activities/node/upload';
import { verifyLocal } from '../../activities/node/seal';
import { releaseStaging } from '../../activities/node/staging';
import { metadataFor, writeSealed } from '../support/checkpoint-files';
import { localNodeContext, stack } from '../support/stack';

/**
 * A restore on the node that holds a checkpoint in memory (its disk copy still being made) takes its own names
 * for the staged files (hard links): each side's release frees only its own copy, so neither pulls files from
 * under the other. Real files on a real filesystem; no S3 is asked (the local copy verifies).
 */
let root: string;
let n = 0;

beforeAll(() => {
  root = fs.mkdtempSync(path.join(stack().home, 'staged-copies-'));
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

/** A checkpoint sealed in this node's staging directory, as a dump and seal leave it before its disk copy. */
function stagedCheckpoint(): { ctx: NodeContext; id: string; staged: string; metadataSha256: string } {
  const id = `staged-copies-${n++}`;
  const base = path.join(root, id);
  const ctx: NodeContext = { ...localNodeContext('copies-node', base), stagingDir: path.join(base, 'shm') };
  const staged = path.join(ctx.stagingDir!, id);
  const files: Record<string, Buffer> = {
    'images/pages-1.img': randomBytes(3 << 20),
    'images/core-1.img': randomBytes(4096),
  };
  const metadataSha256 = writeSealed(staged, metadataFor(id, 'job-copies', ctx.node, files), files);
  return { ctx, id, staged, metadataSha256 };
}

describe('a restore and a checkpoint sharing a node’s memory', () => {
  test('the restore reads its own names for the staged pages (no copy); its release leaves the checkpoint’s copy, whose disk copy then commits', async () => {
    const { ctx, id, staged, metadataSha256 } = stagedCheckpoint();
    const f = await fetchCheckpoint(ctx, { checkpointId: id, metadataSha256 });
    expect(f).toMatchObject({ source: 'nvme', staged: true, dir: `${staged}.restore` });
    expect(restoreLocation(ctx, id)).toBe(f.dir);
    const pages = 'images/pages-1.img';
    // The same inode: the pages are in memory once.
    expect(fs.statSync(path.join(f.dir, pages)).ino).toBe(fs.statSync(path.join(staged, pages)).ino);
    expect(fs.statSync(path.join(staged, pages)).nlink).toBe(2);

    expect(releaseStaging(ctx, { checkpointId: id, copy: 'restore' })).toEqual({ released: true });
    expect(fs.existsSync(f.dir)).toBe(false);
    expect(fs.statSync(path.join(staged, pages)).nlink).toBe(1);
    const disk = await persistCheckpoint(ctx, { checkpointId: id, sync: true });
    expect(disk.bytes).toBe((3 << 20) + 4096);
    await expect(verifyLocal(path.join(ctx.dataDir, 'checkpoints', id), metadataSha256)).resolves.toBeTruthy();
  });

  test('the checkpoint’s release leaves the restore’s copy whole and verifiable', async () => {
    const { ctx, id, staged, metadataSha256 } = stagedCheckpoint();
    const f = await fetchCheckpoint(ctx, { checkpointId: id, metadataSha256 });
    expect(releaseStaging(ctx, { checkpointId: id, copy: 'checkpoint' })).toEqual({ released: true });
    expect(fs.existsSync(staged)).toBe(false);
    await expect(verifyLocal(f.dir, metadataSha256)).resolves.toMatchObject({ checkpointId: id });
    expect(restoreLocation(ctx, id)).toBe(f.dir);
    expect(releaseStaging(ctx, { checkpointId: id, copy: 'restore' })).toEqual({ released: true });
    expect(fs.readdirSync(ctx.stagingDir!)).toEqual([]);
  });

  test('a release that names no copy (workflows from before) frees both, as it did', async () => {
    const { ctx, id, metadataSha256 } = stagedCheckpoint();
    await fetchCheckpoint(ctx, { checkpointId: id, metadataSha256 });
    expect(fs.readdirSync(ctx.stagingDir!).sort()).toEqual([id, `${id}.restore`]);
    expect(releaseStaging(ctx, { checkpointId: id })).toEqual({ released: true });
    expect(fs.readdirSync(ctx.stagingDir!)).toEqual([]);
  });
});

describe('two restores of one checkpoint on one node (replicas on a multi-GPU node)', () => {
  test('each attempt links its own copy; one release leaves the other whole, verifiable, and where its CRIU reads', async () => {
    const { ctx, id, staged, metadataSha256 } = stagedCheckpoint();
    const [a, b] = [`${id}.r1.a1`, `${id}.r2.a1`];
    const [fa, fb] = await Promise.all([
      fetchCheckpoint(ctx, { checkpointId: id, metadataSha256, attemptId: a }),
      fetchCheckpoint(ctx, { checkpointId: id, metadataSha256, attemptId: b }),
    ]);
    expect([fa.dir, fb.dir]).toEqual([`${staged}.restore-${a}`, `${staged}.restore-${b}`]);
    expect(fs.statSync(path.join(staged, 'images/pages-1.img')).nlink).toBe(3);
    expect(restoreLocation(ctx, id, a)).toBe(fa.dir);
    expect(restoreLocation(ctx, id, b)).toBe(fb.dir);

    expect(releaseStaging(ctx, { checkpointId: id, copy: 'restore', attemptId: a })).toEqual({ released: true });
    expect(fs.existsSync(fa.dir)).toBe(false);
    await expect(verifyLocal(fb.dir, metadataSha256)).resolves.toMatchObject({ checkpointId: id });
    expect(restoreLocation(ctx, id, b)).toBe(fb.dir);
    expect(releaseStaging(ctx, { checkpointId: id, copy: 'restore', attemptId: b })).toEqual({ released: true });
    expect(fs.readdirSync(ctx.stagingDir!)).toEqual([id]);
    expect(fs.statSync(path.join(staged, 'images/pages-1.img')).nlink).toBe(1);
  });

  test('an attempt whose fetch ran before copies were per attempt reads the shared copy', async () => {
    const { ctx, id, staged, metadataSha256 } = stagedCheckpoint();
    await fetchCheckpoint(ctx, { checkpointId: id, metadataSha256 });
    expect(restoreLocation(ctx, id, `${id}.r1.a1`)).toBe(`${staged}.restore`);
  });

  test('two downloads from S3 into one node’s disk copy at once: both verified, one copy kept, nothing left beside it', async () => {
    // Sealed and uploaded from one node, fetched twice at once by another that does not stage in memory.
    const { ctx: from, id, staged, metadataSha256 } = stagedCheckpoint();
    await persistCheckpoint(from, { checkpointId: id, sync: true });
    releaseStaging(from, { checkpointId: id, copy: 'checkpoint' });
    expect(fs.existsSync(staged)).toBe(false);
    await uploadCheckpoint(from, { checkpointId: id, metadataSha256 });
    const ctx = localNodeContext('copies-other', path.join(root, `${id}-other`));
    const fetched = await Promise.all(
      [`${id}.r1.a1`, `${id}.r2.a1`].map((attemptId) =>
        fetchCheckpoint(ctx, { checkpointId: id, metadataSha256, attemptId }),
      ),
    );
    const disk = path.join(ctx.dataDir, 'checkpoints', id);
    expect(fetched.map((f) => [f.source, f.staged, f.dir])).toEqual([
      ['s3', false, disk],
      ['s3', false, disk],
    ]);
    await expect(verifyLocal(disk, metadataSha256)).resolves.toMatchObject({ checkpointId: id });
    expect(fs.readdirSync(path.join(ctx.dataDir, 'checkpoints'))).toEqual([id]);
  });
});
