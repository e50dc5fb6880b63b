import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DeleteObjectCommand, HeadObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { chunkKey, GC_LOCK, UPLOAD_LOCK_PREFIX } from '../../activities/chunk-store';
import { chunksOf } from '../../activities/chunking';
import type { NodeContext } from '../../activities/node/context';
import { fetchCheckpoint } from '../../activities/node/fetch';
import { verifyLocal } from '../../activities/node/seal';
import { uploadCheckpoint } from '../../activities/node/upload';
import { ErrorType } from '../../common/errors';
import { FORMAT_V2, METADATA_FILE, MetadataSchema } from '../../common/metadata';
import { writeChunkedDraft } from '../support/checkpoint-files';
import { localNodeContext, stack } from '../support/stack';
import { withS3, failure } from '../support/s3';

/**
 * Content-addressed chunks (format v2) against the real object store of the test stack: the upload stores
 * the large file as chunks named by their SHA-256 and sends none the bucket already holds; a fetch
 * reassembles the file from chunks each checked against its name.
 */
const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');
const MiB = 1 << 20;
const PAGES = 'images/pages-1.img';
let root: string;
let n = 0;

beforeAll(() => {
  root = fs.mkdtempSync(path.join(stack().home, 'chunked-'));
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

/** What the seal leaves with chunks on: the files and seal-draft.json (chunked, the large file unhashed). */
function drafted(large: Buffer): { ctx: NodeContext; id: string; dir: string } {
  const id = `chunked-${Date.now().toString(36)}-${n++}`;
  const ctx = localNodeContext('chunked-node', path.join(root, id));
  const dir = path.join(ctx.dataDir, 'checkpoints', id);
  const files: Record<string, Buffer> = {
    [PAGES]: large,
    'images/core-1.img': randomBytes(4096),
    'images/inventory.img': randomBytes(100),
  };
  writeChunkedDraft(dir, id, 'job-chunked', ctx.node, files, PAGES);
  return { ctx, id, dir };
}

const keys = (prefix: string): Promise<string[]> =>
  withS3(async (s3, bucket) => {
    const r = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix }));
    return (r.Contents ?? []).map((o) => o.Key!).sort();
  });

const localMetadata = (dir: string) =>
  MetadataSchema.parse(JSON.parse(fs.readFileSync(path.join(dir, METADATA_FILE), 'utf8')));

const otherNode = (): NodeContext => localNodeContext('chunked-other', path.join(root, `other-${n++}`));

/** Two checkpoints of 64 MiB uploaded, the second with 5% of the first's bytes rewritten (one contiguous run). */
async function twoCheckpoints() {
  const large = randomBytes(64 * MiB);
  const first = drafted(large);
  await uploadCheckpoint(first.ctx, { checkpointId: first.id });
  const changed = Buffer.from(large);
  randomBytes(large.length / 20).copy(changed, 24 * MiB);
  const second = drafted(changed);
  const r = await uploadCheckpoint(second.ctx, { checkpointId: second.id });
  return { large, first, changed, second, r };
}

describe('upload as content-addressed chunks', () => {
  test('the large file becomes chunks named by their SHA-256 (S3 verified each), metadata.json v2 lists them; a fetch reassembles it', async () => {
    const large = randomBytes(40 * MiB);
    const c = drafted(large);
    const r = await uploadCheckpoint(c.ctx, { checkpointId: c.id });
    const md = localMetadata(c.dir);
    expect(md.format).toBe(FORMAT_V2);
    const pages = md.files.find((f) => f.path === PAGES)!;
    expect(pages.sha256).toBeUndefined();
    expect(pages.chunks!.length).toBeGreaterThanOrEqual(5);
    expect(pages.chunks!.reduce((s, x) => s + x.size, 0)).toBe(large.length);
    // The upload's windowed read of the file cuts it where the pure chunker cuts the same bytes.
    expect(pages.chunks!.map((x) => x.sha256)).toEqual(chunksOf(large).map(sha));
    // No whole object: the bytes are only in the chunks, each stored with S3's own SHA-256 of what it received.
    expect(await keys(`checkpoints/${c.id}/${PAGES}`)).toEqual([]);
    const first = pages.chunks![0];
    const head = await withS3((s3, bucket) =>
      s3.send(new HeadObjectCommand({ Bucket: bucket, Key: chunkKey(first.sha256), ChecksumMode: 'ENABLED' })),
    );
    expect(Buffer.from(head.ChecksumSHA256!, 'base64').toString('hex')).toBe(first.sha256);
    expect(r.bytesSent).toBeGreaterThanOrEqual(large.length);
    // The upload's lock is gone once metadata.json is in S3.
    expect(await keys(UPLOAD_LOCK_PREFIX + c.id)).toEqual([]);
    const f = await fetchCheckpoint(otherNode(), { checkpointId: c.id, metadataSha256: r.metadataSha256 });
    expect(f.source).toBe('s3');
    expect(sha(fs.readFileSync(path.join(f.dir, PAGES)))).toBe(sha(large));
    await verifyLocal(f.dir, r.metadataSha256);
  });

  test('a second checkpoint with 5% of its memory rewritten sends about 5% of the bytes', async () => {
    const { large, changed, second, r } = await twoCheckpoints();
    expect(r.bytesSent).toBeLessThan(large.length * 0.3);
    expect(r.bytesSent).toBeGreaterThanOrEqual(large.length / 20);
    expect(r.bytesReused! + r.bytesSent).toBeGreaterThanOrEqual(large.length);
    const f = await fetchCheckpoint(otherNode(), { checkpointId: second.id, metadataSha256: r.metadataSha256 });
    expect(sha(fs.readFileSync(path.join(f.dir, PAGES)))).toBe(sha(changed));
  });

  test('a restore on a node holding an earlier checkpoint of the job reads the chunks they share from it, each checked by its name; a chunk changed there since comes from S3', async () => {
    const { large, first, changed, second, r } = await twoCheckpoints();
    // A node that holds the first checkpoint (checkpointed or restored there before).
    const holder = otherNode();
    fs.cpSync(first.dir, path.join(holder.dataDir, 'checkpoints', first.id), { recursive: true });
    const f = await fetchCheckpoint(holder, { checkpointId: second.id, metadataSha256: r.metadataSha256 });
    expect(f.source).toBe('s3');
    expect(sha(fs.readFileSync(path.join(f.dir, PAGES)))).toBe(sha(changed));
    expect(f.bytesFromNode).toBeGreaterThan(large.length * 0.7);
    expect(f.bytesFromNode).toBeLessThanOrEqual(large.length - large.length / 20);
    // A node whose copy of the first changed since (a byte of its first chunk): only that chunk is fetched instead.
    const again = otherNode();
    const copy = path.join(again.dataDir, 'checkpoints', first.id);
    fs.cpSync(first.dir, copy, { recursive: true });
    const fd = fs.openSync(path.join(copy, PAGES), 'r+');
    fs.writeSync(fd, Buffer.from([large[100] ^ 0xff]), 0, 1, 100);
    fs.closeSync(fd);
    const g = await fetchCheckpoint(again, { checkpointId: second.id, metadataSha256: r.metadataSha256 });
    expect(sha(fs.readFileSync(path.join(g.dir, PAGES)))).toBe(sha(changed));
    const firstChunk = localMetadata(first.dir).files.find((x) => x.path === PAGES)!.chunks![0];
    expect(g.bytesFromNode).toBe(f.bytesFromNode! - firstChunk.size);
    // A node with nothing of it: everything from S3.
    const bare = await fetchCheckpoint(otherNode(), { checkpointId: second.id, metadataSha256: r.metadataSha256 });
    expect(bare.bytesFromNode).toBeUndefined();
  });

  test('a chunk the bucket serves with other bytes, or not at all: ChecksumMismatch, nothing left of the copy', async () => {
    const large = randomBytes(24 * MiB);
    const c = drafted(large);
    const r = await uploadCheckpoint(c.ctx, { checkpointId: c.id });
    const chunk = localMetadata(c.dir).files.find((f) => f.path === PAGES)!.chunks![1];
    await withS3((s3, bucket) =>
      s3.send(new PutObjectCommand({ Bucket: bucket, Key: chunkKey(chunk.sha256), Body: randomBytes(chunk.size) })),
    );
    const other = otherNode();
    const e = await failure(fetchCheckpoint(other, { checkpointId: c.id, metadataSha256: r.metadataSha256 }));
    expect(e.type).toBe(ErrorType.ChecksumMismatch);
    expect(e.message).toContain('other bytes under its name');
    expect(fs.existsSync(path.join(other.dataDir, 'checkpoints', c.id))).toBe(false);
    await withS3((s3, bucket) => s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: chunkKey(chunk.sha256) })));
    const gone = await failure(fetchCheckpoint(otherNode(), { checkpointId: c.id, metadataSha256: r.metadataSha256 }));
    expect(gone.type).toBe(ErrorType.ChecksumMismatch);
    expect(gone.message).toContain('missing from the bucket');
  });

  test('a retry after metadata.json was committed locally but not sent: the chunks it names are made whole in S3, then it goes', async () => {
    const large = randomBytes(24 * MiB);
    const c = drafted(large);
    await uploadCheckpoint(c.ctx, { checkpointId: c.id });
    const md = localMetadata(c.dir);
    const chunk = md.files.find((f) => f.path === PAGES)!.chunks![0];
    // What a crash between the local commit and the PUT leaves, with one chunk since lost in S3.
    await withS3(async (s3, bucket) => {
      await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: `checkpoints/${c.id}/${METADATA_FILE}` }));
      await s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: chunkKey(chunk.sha256) }));
    });
    const r = await uploadCheckpoint(c.ctx, { checkpointId: c.id });
    expect(r.bytesSent).toBeGreaterThanOrEqual(chunk.size);
    expect(r.bytesSent).toBeLessThan(large.length / 2);
    const f = await fetchCheckpoint(otherNode(), { checkpointId: c.id, metadataSha256: r.metadataSha256 });
    expect(sha(fs.readFileSync(path.join(f.dir, PAGES)))).toBe(sha(large));
    // The local bytes changed since that commit: refused, never sent under the old names.
    const file = path.join(c.dir, PAGES);
    const fd = fs.openSync(file, 'r+');
    fs.writeSync(fd, Buffer.from('x'), 0, 1, 5 * MiB);
    fs.closeSync(fd);
    await withS3((s3, bucket) =>
      s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: `checkpoints/${c.id}/${METADATA_FILE}` })),
    );
    const e = await failure(uploadCheckpoint(c.ctx, { checkpointId: c.id }));
    expect(e.type).toBe(ErrorType.ChecksumMismatch);
    expect(await keys(`checkpoints/${c.id}/${METADATA_FILE}`)).toEqual([]);
  });

  test('the file written after the seal (grown or cut short): ChecksumMismatch, no metadata.json', async () => {
    for (const change of [(f: string) => fs.appendFileSync(f, 'more'), (f: string) => fs.truncateSync(f, 21 * MiB)]) {
      const c = drafted(randomBytes(24 * MiB));
      change(path.join(c.dir, PAGES));
      const e = await failure(uploadCheckpoint(c.ctx, { checkpointId: c.id }));
      expect(e.type).toBe(ErrorType.ChecksumMismatch);
      expect(fs.existsSync(path.join(c.dir, METADATA_FILE))).toBe(false);
      expect(await keys(`checkpoints/${c.id}/${METADATA_FILE}`)).toEqual([]);
    }
  });

  test('while a live collector lock is there the upload waits, holding its own lock; it goes on once the collector is gone', async () => {
    const c = drafted(randomBytes(20 * MiB));
    await withS3((s3, bucket) => s3.send(new PutObjectCommand({ Bucket: bucket, Key: GC_LOCK, Body: '{}' })));
    let settled = false;
    const up = uploadCheckpoint(c.ctx, { checkpointId: c.id }).finally(() => (settled = true));
    await new Promise((r) => setTimeout(r, 2500));
    expect(settled).toBe(false);
    expect(await keys(UPLOAD_LOCK_PREFIX + c.id)).toEqual([UPLOAD_LOCK_PREFIX + c.id]);
    expect(await keys(`checkpoints/${c.id}/${METADATA_FILE}`)).toEqual([]);
    await withS3((s3, bucket) => s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: GC_LOCK })));
    await up;
    expect(await keys(`checkpoints/${c.id}/${METADATA_FILE}`)).toEqual([`checkpoints/${c.id}/${METADATA_FILE}`]);
  });
});
