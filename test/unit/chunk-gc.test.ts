import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CreateBucketCommand, DeleteObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { createChunkGcActivities } from '../../activities/control/chunk-gc';
import { createRetentionActivities } from '../../activities/control/retention';
import { CHUNK_PREFIX, UPLOAD_LOCK_PREFIX } from '../../activities/chunk-store';
import type { NodeContext } from '../../activities/node/context';
import { fetchCheckpoint } from '../../activities/node/fetch';
import { uploadCheckpoint } from '../../activities/node/upload';
import { makeS3Client } from '../../activities/s3-client';
import type { S3Config } from '../../common/config';
import { METADATA_FILE, MetadataSchema } from '../../common/metadata';
import { sha256, writeChunkedDraft } from '../support/checkpoint-files';
import { localNodeContext, stack } from '../support/stack';

/**
 * The collection of chunks no checkpoint names, against the real object store, in a bucket of its own (other
 * suites' uploads in the shared bucket would make it skip): what it deletes, what it keeps, and its race with
 * an upload reusing the very chunks it is deleting.
 */
const MiB = 1 << 20;
const PAGES = 'images/pages-1.img';
let root: string;
let s3cfg: S3Config;
let n = 0;

beforeAll(async () => {
  root = fs.mkdtempSync(path.join(stack().home, 'chunk-gc-'));
  const base = localNodeContext('gc', root).s3;
  s3cfg = { ...base, bucket: `gc-${Date.now().toString(36)}` };
  const s3 = makeS3Client(s3cfg);
  await s3.send(new CreateBucketCommand({ Bucket: s3cfg.bucket }));
  s3.destroy();
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const gc = createChunkGcActivities;
const ctxFor = (name: string): NodeContext => ({ ...localNodeContext(name, path.join(root, name)), s3: s3cfg });

/** A checkpoint sealed with chunks on (seal-draft.json), ready for the upload. */
function drafted(large: Buffer): { ctx: NodeContext; id: string } {
  const id = `gc-${Date.now().toString(36)}-${n++}`;
  const ctx = ctxFor(`node-${id}`);
  const dir = path.join(ctx.dataDir, 'checkpoints', id);
  const files = { [PAGES]: large, 'images/inventory.img': randomBytes(100) };
  writeChunkedDraft(dir, id, 'job-gc', ctx.node, files, PAGES);
  return { ctx, id };
}

async function uploaded(large: Buffer): Promise<{ id: string; chunks: string[]; metadataSha256: string }> {
  const c = drafted(large);
  const r = await uploadCheckpoint(c.ctx, { checkpointId: c.id });
  const md = MetadataSchema.parse(
    JSON.parse(fs.readFileSync(path.join(c.ctx.dataDir, 'checkpoints', c.id, METADATA_FILE), 'utf8')),
  );
  return {
    id: c.id,
    chunks: md.files.flatMap((f) => (f.chunks ?? []).map((x) => x.sha256)),
    metadataSha256: r.metadataSha256!,
  };
}

async function chunksInBucket(): Promise<Set<string>> {
  const s3 = makeS3Client(s3cfg);
  try {
    const out = new Set<string>();
    for (let token: string | undefined; ;) {
      const p = await s3.send(
        new ListObjectsV2Command({ Bucket: s3cfg.bucket, Prefix: CHUNK_PREFIX, ContinuationToken: token }),
      );
      for (const o of p.Contents ?? []) out.add(o.Key!.slice(CHUNK_PREFIX.length));
      if (!p.IsTruncated) return out;
      token = p.NextContinuationToken;
    }
  } finally {
    s3.destroy();
  }
}

const fetched = async (id: string, metadataSha256: string): Promise<string> => {
  const f = await fetchCheckpoint(ctxFor(`fetch-${n++}`), { checkpointId: id, metadataSha256 });
  return sha256(fs.readFileSync(path.join(f.dir, PAGES)));
};

describe('chunk collection', () => {
  test('deletes the chunks only a deleted checkpoint named; keeps shared ones, recent ones, and those a dry run counts', async () => {
    const shared = randomBytes(24 * MiB);
    const a = await uploaded(Buffer.concat([shared, randomBytes(16 * MiB)]));
    const bBytes = Buffer.concat([shared, randomBytes(16 * MiB)]);
    const b = await uploaded(bBytes);
    const onlyA = a.chunks.filter((c) => !b.chunks.includes(c));
    expect(onlyA.length).toBeGreaterThan(0);
    expect(a.chunks.length - onlyA.length).toBeGreaterThan(0);
    await createRetentionActivities(s3cfg).deleteCheckpoint({ checkpointId: a.id, node: 'x' });

    // Younger than minAge: kept.
    const recent = await gc(s3cfg).collectChunks({ minAgeMs: 60 * 60 * 1000 });
    expect(recent.deleted).toBe(0);
    expect(recent.keptRecent).toBeGreaterThanOrEqual(onlyA.length);
    const dry = await gc(s3cfg).collectChunks({ minAgeMs: 0, dryRun: true });
    expect(dry.deleted).toBe(onlyA.length);
    expect((await chunksInBucket()).size).toBeGreaterThanOrEqual(a.chunks.length);

    const r = await gc(s3cfg).collectChunks({ minAgeMs: 0 });
    expect(r.outcome).toBe('collected');
    expect(r.deleted).toBe(onlyA.length);
    const left = await chunksInBucket();
    for (const c of onlyA) expect(left.has(c)).toBe(false);
    for (const c of b.chunks) expect(left.has(c)).toBe(true);
    expect(await fetched(b.id, b.metadataSha256)).toBe(sha256(bBytes));
  });

  test('with an upload in flight (its lock live) it deletes nothing; a lock not refreshed for its TTL no longer counts', async () => {
    const a = await uploaded(randomBytes(20 * MiB));
    await createRetentionActivities(s3cfg).deleteCheckpoint({ checkpointId: a.id, node: 'x' });
    const s3 = makeS3Client(s3cfg);
    await s3.send(new PutObjectCommand({ Bucket: s3cfg.bucket, Key: `${UPLOAD_LOCK_PREFIX}someone`, Body: '{}' }));
    const r = await gc(s3cfg).collectChunks({ minAgeMs: 0 });
    expect(r.outcome).toBe('skipped');
    expect(r.reason).toContain('someone');
    expect(r.deleted).toBe(0);
    const left = await chunksInBucket();
    for (const c of a.chunks) expect(left.has(c)).toBe(true);
    await s3.send(new DeleteObjectCommand({ Bucket: s3cfg.bucket, Key: `${UPLOAD_LOCK_PREFIX}someone` }));
    s3.destroy();
    const after = await gc(s3cfg).collectChunks({ minAgeMs: 0 });
    expect(after).toMatchObject({ outcome: 'collected' });
    expect(after.deleted).toBeGreaterThanOrEqual(a.chunks.length);
  });

  test('a metadata.json it cannot parse: every chunk name in it is kept', async () => {
    const a = await uploaded(randomBytes(20 * MiB));
    const s3 = makeS3Client(s3cfg);
    const key = `checkpoints/${a.id}/${METADATA_FILE}`;
    await s3.send(
      new PutObjectCommand({
        Bucket: s3cfg.bucket,
        Key: key,
        Body: `{"future": true, "names": ${JSON.stringify(a.chunks)}}`,
      }),
    );
    s3.destroy();
    const r = await gc(s3cfg).collectChunks({ minAgeMs: 0 });
    expect(r.unreadableMetadata).toContain(key);
    const left = await chunksInBucket();
    for (const c of a.chunks) expect(left.has(c)).toBe(true);
    await createRetentionActivities(s3cfg).deleteCheckpoint({ checkpointId: a.id, node: 'x' });
  });

  test('raced against uploads that reuse the very chunks it is deleting: every committed checkpoint stays whole', async () => {
    const bytes = randomBytes(32 * MiB);
    for (let round = 0; round < 6; round++) {
      // The chunks are in the bucket, named by no checkpoint (its checkpoint deleted): exactly what it collects.
      const old = await uploaded(bytes);
      await createRetentionActivities(s3cfg).deleteCheckpoint({ checkpointId: old.id, node: 'x' });
      const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
      const [up, collected] = await Promise.all([
        delay(round * 15).then(() => uploaded(bytes)),
        delay((5 - round) * 15).then(() => gc(s3cfg).collectChunks({ minAgeMs: 0 })),
      ]);
      // Whichever came first, the new checkpoint names only chunks that are there, and they are its bytes.
      const left = await chunksInBucket();
      for (const c of up.chunks) expect(left.has(c)).toBe(true);
      expect(await fetched(up.id, up.metadataSha256)).toBe(sha256(bytes));
      expect(['collected', 'skipped']).toContain(collected.outcome);
      await createRetentionActivities(s3cfg).deleteCheckpoint({ checkpointId: up.id, node: 'x' });
    }
  });
});
