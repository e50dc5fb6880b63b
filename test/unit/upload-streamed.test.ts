import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import type { NodeContext } from '../../activities/node/context';
import { fetchCheckpoint } from '../../activities/node/fetch';
import { persistCheckpoint } from '../../activities/node/persist';
import { writtenStamp } from '../../activities/node/seal';
import { compositeSha256, uploadCheckpoint } from '../../activities/node/upload';
import { partSizeFor } from '../../activities/s3-client';
import { ErrorType } from '../../common/errors';
import { METADATA_FILE, MetadataSchema, SEAL_DRAFT_FILE, type SealDraft } from '../../common/metadata';
import { metadataFor, writeFiles } from '../support/checkpoint-files';
import { localNodeContext, stack } from '../support/stack';
import { withS3, failure } from '../support/s3';

/**
 * Hashing while streaming (PATCH 'checkpoint-hash-while-streaming') against the real object store of the test
 * stack: the seal leaves the large file unhashed (seal-draft.json), the upload's one read hashes it as it goes to
 * S3 and commits metadata.json from those hashes afterwards; a file changed between attempts never gets a
 * metadata.json naming it.
 */
const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');
const MiB = 1 << 20;
const LARGE = 40 * MiB; // three 16 MiB parts
const PAGES = 'images/pages-1.img';
let root: string;
let n = 0;

beforeAll(() => {
  root = fs.mkdtempSync(path.join(stack().home, 'streamed-'));
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

/** What the seal leaves with hashing streamed: the files and seal-draft.json (no sha256 for the large file). */
function drafted(staging = false): { ctx: NodeContext; id: string; dir: string; large: Buffer } {
  const id = `streamed-${Date.now().toString(36)}-${n++}`;
  const base = path.join(root, `${id}-${n++}`);
  const ctx = {
    ...localNodeContext('streamed-node', base),
    ...(staging ? { stagingDir: path.join(base, 'shm') } : {}),
  };
  const dir = staging ? path.join(ctx.stagingDir!, id) : path.join(ctx.dataDir, 'checkpoints', id);
  const large = randomBytes(LARGE);
  const files: Record<string, Buffer> = {
    [PAGES]: large,
    'images/core-1.img': randomBytes(4096),
    'images/inventory.img': randomBytes(100),
  };
  writeFiles(dir, files);
  // The large file left unhashed, as a seal with hashing streamed leaves it.
  const sealed = metadataFor(id, 'job-streamed', ctx.node, files);
  const draft: SealDraft = {
    ...sealed,
    files: sealed.files.map((f) => (f.path === PAGES ? { path: f.path, size: f.size } : f)),
  };
  fs.writeFileSync(path.join(dir, SEAL_DRAFT_FILE), JSON.stringify(draft, null, 2));
  return { ctx, id, dir, large };
}

const keys = (id: string): Promise<string[]> =>
  withS3(async (s3, bucket) => {
    const r = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `checkpoints/${id}/` }));
    return (r.Contents ?? []).map((o) => o.Key!.slice(`checkpoints/${id}/`.length)).sort();
  });

const object = (id: string, file: string): Promise<Buffer> =>
  withS3(async (s3, bucket) => {
    const r = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: `checkpoints/${id}/${file}` }));
    return Buffer.from(await r.Body!.transformToByteArray());
  });

const remove = (id: string, file: string): Promise<unknown> =>
  withS3((s3, bucket) => s3.send(new DeleteObjectCommand({ Bucket: bucket, Key: `checkpoints/${id}/${file}` })));

function flipByte(file: string, offset: number): void {
  const fd = fs.openSync(file, 'r+');
  const b = Buffer.alloc(1);
  fs.readSync(fd, b, 0, 1, offset);
  b[0] ^= 0xff;
  fs.writeSync(fd, b, 0, 1, offset);
  fs.closeSync(fd);
}

/** The composite checksum S3 gives a multipart object of these bytes, computed here independently. */
function composite(b: Buffer): string {
  const part = partSizeFor(b.length);
  const digests: Buffer[] = [];
  for (let o = 0; o < b.length; o += part)
    digests.push(
      createHash('sha256')
        .update(b.subarray(o, o + part))
        .digest(),
    );
  return compositeSha256(digests);
}

/** An S3 multipart object (or an open upload when `complete` is false) of `bytes`, parts as the upload cuts them. */
async function multipart(id: string, bytes: Buffer, parts: number, complete: boolean): Promise<void> {
  await withS3(async (s3, bucket) => {
    const key = `checkpoints/${id}/${PAGES}`;
    const part = partSizeFor(bytes.length);
    const mp = await s3.send(
      new CreateMultipartUploadCommand({ Bucket: bucket, Key: key, ChecksumAlgorithm: 'SHA256' }),
    );
    const done = [];
    for (let i = 0; i < parts; i++) {
      const r = await s3.send(
        new UploadPartCommand({
          Bucket: bucket,
          Key: key,
          UploadId: mp.UploadId,
          PartNumber: i + 1,
          Body: bytes.subarray(i * part, (i + 1) * part),
          ChecksumAlgorithm: 'SHA256',
        }),
      );
      done.push({ PartNumber: i + 1, ETag: r.ETag, ChecksumSHA256: r.ChecksumSHA256 });
    }
    if (complete)
      await s3.send(
        new CompleteMultipartUploadCommand({
          Bucket: bucket,
          Key: key,
          UploadId: mp.UploadId,
          MultipartUpload: { Parts: done },
        }),
      );
  });
}

describe('upload with hashing streamed: metadata.json from the hashes of the one read that sent the bytes', () => {
  test('the large file is hashed as it streams; metadata.json is committed locally and in S3 after the data, with S3 composite checksum', async () => {
    const c = drafted();
    const r = await uploadCheckpoint(c.ctx, { checkpointId: c.id });
    const local = fs.readFileSync(path.join(c.dir, METADATA_FILE));
    expect(r.metadataSha256).toBe(sha(local));
    expect(sha(await object(c.id, METADATA_FILE))).toBe(sha(local));
    const md = MetadataSchema.parse(JSON.parse(local.toString('utf8')));
    const pages = md.files.find((f) => f.path === PAGES)!;
    expect(pages.sha256).toBe(sha(c.large));
    expect(pages.s3Checksum).toBe(composite(c.large));
    const head = await withS3((s3, bucket) =>
      s3.send(new HeadObjectCommand({ Bucket: bucket, Key: `checkpoints/${c.id}/${PAGES}`, ChecksumMode: 'ENABLED' })),
    );
    expect(head.ChecksumSHA256).toBe(pages.s3Checksum);
    expect(sha(await object(c.id, PAGES))).toBe(sha(c.large));
    // A fetch on another node verifies it (S3's checksum against the record, then the streamed sha256).
    const other = localNodeContext('streamed-other', path.join(root, `${c.id}-other`));
    const f = await fetchCheckpoint(other, { checkpointId: c.id, metadataSha256: r.metadataSha256 });
    expect(f.source).toBe('s3');
    expect(sha(fs.readFileSync(path.join(f.dir, PAGES)))).toBe(sha(c.large));
  });

  test('a file changed between two attempts (its first part already in S3): ChecksumMismatch, no metadata.json anywhere, upload aborted', async () => {
    const c = drafted();
    await multipart(c.id, c.large, 1, false); // what an attempt cut by a crash leaves
    flipByte(path.join(c.dir, PAGES), 100); // inside part 1
    const e = await failure(uploadCheckpoint(c.ctx, { checkpointId: c.id }));
    expect(e.type).toBe(ErrorType.ChecksumMismatch);
    expect(e.message).toContain(PAGES);
    expect(fs.existsSync(path.join(c.dir, METADATA_FILE))).toBe(false);
    expect(await keys(c.id)).not.toContain(METADATA_FILE);
    const open = await withS3((s3, bucket) =>
      s3.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: `checkpoints/${c.id}/${PAGES}` })),
    );
    expect(open.Uploads ?? []).toHaveLength(0);
  });

  test('a file written after the seal (its inode and change time sealed, as the seal records them): ChecksumMismatch before a byte of it is sent', async () => {
    const c = drafted();
    const draftFile = path.join(c.dir, SEAL_DRAFT_FILE);
    const draft = JSON.parse(fs.readFileSync(draftFile, 'utf8')) as SealDraft;
    const pages = draft.files.find((f) => f.path === PAGES)!;
    pages.written = writtenStamp(path.join(c.dir, PAGES));
    fs.writeFileSync(draftFile, JSON.stringify(draft, null, 2));
    flipByte(path.join(c.dir, PAGES), LARGE >> 1); // the same size: only the change time tells
    const e = await failure(uploadCheckpoint(c.ctx, { checkpointId: c.id }));
    expect(e.type).toBe(ErrorType.ChecksumMismatch);
    expect(e.message).toContain(`${PAGES}: the local copy changed after sealing (written`);
    expect(fs.existsSync(path.join(c.dir, METADATA_FILE))).toBe(false);
    expect(await keys(c.id)).not.toContain(PAGES);
    expect(await keys(c.id)).not.toContain(METADATA_FILE);
  });

  test('unchanged, the parts of an interrupted attempt are kept, not sent again', async () => {
    const c = drafted();
    await multipart(c.id, c.large, 2, false);
    const r = await uploadCheckpoint(c.ctx, { checkpointId: c.id });
    expect(r.partsResumed).toBe(2);
    expect(sha(await object(c.id, PAGES))).toBe(sha(c.large));
  });

  test('crash after the data, before metadata.json: the object is kept if the local bytes are still its bytes, else ChecksumMismatch', async () => {
    const c = drafted();
    await multipart(c.id, c.large, 3, true); // completed by the attempt that died
    const r = await uploadCheckpoint(c.ctx, { checkpointId: c.id });
    expect(r.bytesSent).toBe(4096 + 100); // the small files only
    expect(sha(await object(c.id, PAGES))).toBe(sha(c.large));

    const d = drafted();
    await multipart(d.id, d.large, 3, true);
    flipByte(path.join(d.dir, PAGES), 30 * MiB);
    const e = await failure(uploadCheckpoint(d.ctx, { checkpointId: d.id }));
    expect(e.type).toBe(ErrorType.ChecksumMismatch);
    expect(fs.existsSync(path.join(d.dir, METADATA_FILE))).toBe(false);
    expect(await keys(d.id)).not.toContain(METADATA_FILE);
  });

  test('crash after the local metadata.json, before its upload: the retry sends metadata.json, not the large file again', async () => {
    const c = drafted();
    const first = await uploadCheckpoint(c.ctx, { checkpointId: c.id });
    await remove(c.id, METADATA_FILE);
    const again = await uploadCheckpoint(c.ctx, { checkpointId: c.id });
    expect(again.bytesSent).toBe(4096 + 100);
    expect(again.metadataSha256).toBe(first.metadataSha256);
    expect(sha(await object(c.id, METADATA_FILE))).toBe(first.metadataSha256);
  });

  test('an object replaced in S3 after the upload is refused by its S3 checksum before a byte is read', async () => {
    const c = drafted();
    const r = await uploadCheckpoint(c.ctx, { checkpointId: c.id });
    await multipart(c.id, randomBytes(LARGE), 3, true); // same size, other bytes
    const other = localNodeContext('streamed-other', path.join(root, `${c.id}-other`));
    const e = await failure(fetchCheckpoint(other, { checkpointId: c.id, metadataSha256: r.metadataSha256 }));
    expect(e.type).toBe(ErrorType.ChecksumMismatch);
    expect(e.message).toContain('recorded');
  });
});

describe('persist with hashing streamed: the disk copy is committed only with the metadata.json of the upload', () => {
  test('copied before the upload committed: sealed false, no metadata.json on disk; a later call commits it without copying again', async () => {
    const c = drafted(true);
    const first = await persistCheckpoint(c.ctx, { checkpointId: c.id, sync: false });
    expect(first.sealed).toBe(false);
    const dest = path.join(c.ctx.dataDir, 'checkpoints', c.id);
    expect(fs.existsSync(path.join(dest, METADATA_FILE))).toBe(false);
    const up = await uploadCheckpoint(c.ctx, { checkpointId: c.id });
    const copied = fs.statSync(path.join(`${dest}.persist`, PAGES)).mtimeMs;
    const second = await persistCheckpoint(c.ctx, { checkpointId: c.id, sync: false });
    expect(second.sealed).not.toBe(false);
    expect(sha(fs.readFileSync(path.join(dest, METADATA_FILE)))).toBe(up.metadataSha256);
    expect(fs.statSync(path.join(dest, PAGES)).mtimeMs).toBe(copied);
    expect(sha(fs.readFileSync(path.join(dest, PAGES)))).toBe(sha(c.large));
  });
});
