import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  CreateMultipartUploadCommand,
  GetObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { listS3CheckpointIds, readS3Checkpoint } from '../../activities/catalogue';
import type { NodeContext } from '../../activities/node/context';
import { fetchCheckpoint } from '../../activities/node/fetch';
import { uploadCheckpoint } from '../../activities/node/upload';
import { makeS3Client, partSizeFor, unsignedPayloadWithChecksum } from '../../activities/s3-client';
import { ErrorType } from '../../common/errors';
import { METADATA_FILE, type Metadata } from '../../common/metadata';
import { metadataFor, writeSealed } from '../support/checkpoint-files';
import { localNodeContext, stack } from '../support/stack';
import { failure } from '../support/s3';

/**
 * The upload's and the fetch's integrity checks against the real object store (MinIO of the test stack): the
 * bytes that reach S3 are the bytes sealed, or nothing is committed.
 */
const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');
const MiB = 1 << 20;
const LARGE = 40 * MiB; // three 16 MiB parts: a multipart upload
let root: string;
let n = 0;

beforeAll(() => {
  root = fs.mkdtempSync(path.join(stack().home, 'integrity-'));
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

/** A sealed checkpoint on a node: files, then metadata.json naming their sizes and SHA-256 (what seal writes). */
function sealed(reuse?: string): { ctx: NodeContext; id: string; dir: string; metadataSha256: string; large: Buffer } {
  const id = reuse ?? `integrity-${Date.now().toString(36)}-${n++}`;
  const ctx = localNodeContext('integrity-node', path.join(root, `${id}-${n++}`));
  const dir = path.join(ctx.dataDir, 'checkpoints', id);
  const large = randomBytes(LARGE);
  const files: Record<string, Buffer> = {
    'images/pages-1.img': large,
    'images/core-1.img': randomBytes(4096),
    'images/inventory.img': randomBytes(100),
  };
  const metadataSha256 = writeSealed(dir, metadataFor(id, 'job-integrity', ctx.node, files), files);
  return { ctx, id, dir, metadataSha256, large };
}

const s3cfg = (): NodeContext['s3'] => localNodeContext('s3', root).s3;

function flipByte(file: string, offset: number): void {
  const fd = fs.openSync(file, 'r+');
  const b = Buffer.alloc(1);
  fs.readSync(fd, b, 0, 1, offset);
  b[0] ^= 0xff;
  fs.writeSync(fd, b, 0, 1, offset);
  fs.closeSync(fd);
}

async function keys(id: string): Promise<string[]> {
  const s3 = makeS3Client(s3cfg());
  try {
    const r = await s3.send(new ListObjectsV2Command({ Bucket: s3cfg().bucket, Prefix: `checkpoints/${id}/` }));
    return (r.Contents ?? []).map((o) => o.Key!.slice(`checkpoints/${id}/`.length)).sort();
  } finally {
    s3.destroy();
  }
}

async function inProgress(id: string, file: string): Promise<number> {
  const s3 = makeS3Client(s3cfg());
  try {
    const r = await s3.send(
      new ListMultipartUploadsCommand({ Bucket: s3cfg().bucket, Prefix: `checkpoints/${id}/${file}` }),
    );
    return (r.Uploads ?? []).length;
  } finally {
    s3.destroy();
  }
}

async function object(id: string, file: string): Promise<Buffer> {
  const s3 = makeS3Client(s3cfg());
  try {
    const r = await s3.send(new GetObjectCommand({ Bucket: s3cfg().bucket, Key: `checkpoints/${id}/${file}` }));
    return Buffer.from(await r.Body!.transformToByteArray());
  } finally {
    s3.destroy();
  }
}

describe('upload: the bytes in S3 are the bytes sealed', () => {
  test('an unchanged copy is uploaded; every object is the sealed bytes; metadata.json last', async () => {
    const c = sealed();
    const r = await uploadCheckpoint(c.ctx, { checkpointId: c.id, metadataSha256: c.metadataSha256 });
    expect(r.partsSent).toBe(2 + Math.ceil(LARGE / partSizeFor(LARGE)));
    expect(await keys(c.id)).toEqual([
      'images/core-1.img',
      'images/inventory.img',
      'images/pages-1.img',
      METADATA_FILE,
    ]);
    expect(sha(await object(c.id, 'images/pages-1.img'))).toBe(sha(c.large));
    expect(sha(await object(c.id, METADATA_FILE))).toBe(c.metadataSha256);
  });

  test('a byte of a large file changed after sealing: ChecksumMismatch naming the file, multipart aborted, nothing committed', async () => {
    const c = sealed();
    flipByte(path.join(c.dir, 'images/pages-1.img'), 20 * MiB + 7); // in the second part
    const e = await failure(uploadCheckpoint(c.ctx, { checkpointId: c.id, metadataSha256: c.metadataSha256 }));
    expect(e.type).toBe(ErrorType.ChecksumMismatch);
    expect(e.nonRetryable).toBe(true);
    expect(e.message).toContain('images/pages-1.img');
    expect(e.message).toContain('changed after sealing');
    const left = await keys(c.id);
    expect(left).not.toContain('images/pages-1.img');
    expect(left).not.toContain(METADATA_FILE);
    expect(await inProgress(c.id, 'images/pages-1.img')).toBe(0);
  });

  test('a byte of a small file changed after sealing: S3 refuses it (sealed SHA-256 as its checksum): ChecksumMismatch, no metadata.json', async () => {
    const c = sealed();
    flipByte(path.join(c.dir, 'images/core-1.img'), 10);
    const e = await failure(uploadCheckpoint(c.ctx, { checkpointId: c.id, metadataSha256: c.metadataSha256 }));
    expect(e.type).toBe(ErrorType.ChecksumMismatch);
    expect(e.message).toContain('images/core-1.img');
    const left = await keys(c.id);
    expect(left).not.toContain('images/core-1.img');
    expect(left).not.toContain(METADATA_FILE);
  });

  test.each([
    ['its payload signed (the SDK hashes the body)', (c: PutObjectCommand) => c],
    ['an unsigned payload (how our uploads send)', unsignedPayloadWithChecksum],
  ])('S3 itself refuses a body whose x-amz-checksum-sha256 is not its own, %s', async (how, send) => {
    const ctx = localNodeContext('x', root);
    const s3 = makeS3Client(ctx.s3);
    const cmd = send(
      new PutObjectCommand({
        Bucket: ctx.s3.bucket,
        Key: `checkpoints/refused-${Date.now()}/x`,
        Body: Buffer.from('the bytes sent'),
        ChecksumSHA256: Buffer.from(sha('the bytes sealed'), 'hex').toString('base64'),
      }),
    );
    // What went on the wire, read after signing.
    let sent: string | undefined;
    cmd.middlewareStack.add(
      (next) => async (args) => {
        sent = (args.request as { headers: Record<string, string> }).headers['x-amz-content-sha256'];
        return next(args);
      },
      { step: 'deserialize' },
    );
    try {
      const err = await s3.send(cmd).then(
        () => null,
        (x: unknown) => x as Error & { $metadata?: { httpStatusCode?: number } },
      );
      expect(err).not.toBeNull();
      expect(err!.$metadata?.httpStatusCode).toBe(400);
      expect(sent).toBe(how.startsWith('an unsigned') ? 'UNSIGNED-PAYLOAD' : sha('the bytes sent'));
    } finally {
      s3.destroy();
    }
  });

  test('metadata.json changed after sealing: refused before anything is sent', async () => {
    const c = sealed();
    const mdFile = path.join(c.dir, METADATA_FILE);
    fs.writeFileSync(mdFile, JSON.stringify(JSON.parse(fs.readFileSync(mdFile, 'utf8')))); // same content, other bytes
    const e = await failure(uploadCheckpoint(c.ctx, { checkpointId: c.id, metadataSha256: c.metadataSha256 }));
    expect(e.type).toBe(ErrorType.ChecksumMismatch);
    expect(e.message).toContain(METADATA_FILE);
    expect(await keys(c.id)).toEqual([]);
  });

  describe('resuming an interrupted multipart upload: the parts already in S3 are hashed too', () => {
    /** What an attempt cut by a crash leaves: an open multipart upload holding the file's first part. */
    async function interrupted(c: ReturnType<typeof sealed>): Promise<void> {
      const s3 = makeS3Client(c.ctx.s3);
      try {
        const key = `checkpoints/${c.id}/images/pages-1.img`;
        const part = partSizeFor(LARGE);
        const mp = await s3.send(
          new CreateMultipartUploadCommand({
            Bucket: c.ctx.s3.bucket,
            Key: key,
            ChecksumAlgorithm: 'SHA256',
            Metadata: { sha256: sha(c.large) },
          }),
        );
        await s3.send(
          new UploadPartCommand({
            Bucket: c.ctx.s3.bucket,
            Key: key,
            UploadId: mp.UploadId,
            PartNumber: 1,
            Body: c.large.subarray(0, part),
            ChecksumAlgorithm: 'SHA256',
          }),
        );
      } finally {
        s3.destroy();
      }
    }

    test('unchanged: the part in S3 is not sent again, and the object is the sealed bytes', async () => {
      const c = sealed();
      await interrupted(c);
      const r = await uploadCheckpoint(c.ctx, { checkpointId: c.id, metadataSha256: c.metadataSha256 });
      expect(r.partsResumed).toBe(1);
      expect(sha(await object(c.id, 'images/pages-1.img'))).toBe(sha(c.large));
    });

    test('the local copy of an already uploaded part changed: the whole-file hash refuses it, the upload is aborted', async () => {
      const c = sealed();
      await interrupted(c);
      flipByte(path.join(c.dir, 'images/pages-1.img'), 100); // inside part 1, which S3 already holds
      const e = await failure(uploadCheckpoint(c.ctx, { checkpointId: c.id, metadataSha256: c.metadataSha256 }));
      expect(e.type).toBe(ErrorType.ChecksumMismatch);
      expect(e.message).toContain('images/pages-1.img');
      expect(await keys(c.id)).not.toContain(METADATA_FILE);
      expect(await inProgress(c.id, 'images/pages-1.img')).toBe(0);
    });
  });

  test('another checkpoint under the same id in S3 (its history gone): CheckpointExists, nothing overwritten; our own retry goes through', async () => {
    const first = sealed();
    await uploadCheckpoint(first.ctx, { checkpointId: first.id, metadataSha256: first.metadataSha256 });
    const second = sealed(first.id); // other bytes, same id, another node
    const e = await failure(
      uploadCheckpoint(second.ctx, { checkpointId: second.id, metadataSha256: second.metadataSha256 }),
    );
    expect(e.type).toBe(ErrorType.CheckpointExists);
    expect(sha(await object(first.id, 'images/pages-1.img'))).toBe(sha(first.large));
    expect(sha(await object(first.id, METADATA_FILE))).toBe(first.metadataSha256);
    const again = await uploadCheckpoint(first.ctx, { checkpointId: first.id, metadataSha256: first.metadataSha256 });
    expect(again.partsSent).toBeGreaterThan(0);
  });

  test.each([
    ['a bucket that does not exist', { bucket: 'kybernate-no-such-bucket' }],
    ["a secret that is not the key's", { secretAccessKey: 'not-the-secret' }],
  ])('S3 refuses for good (%s): S3Rejected, not retryable', async (_what, s3Override) => {
    const c = sealed();
    const ctx = { ...c.ctx, s3: { ...c.ctx.s3, ...s3Override } };
    const e = await failure(uploadCheckpoint(ctx, { checkpointId: c.id, metadataSha256: c.metadataSha256 }));
    expect(e.type).toBe(ErrorType.S3Rejected);
    expect(e.nonRetryable).toBe(true);
  });
});

describe('fetch: metadata.json checked against its seal; a corrupt local copy is replaced from S3', () => {
  test('a metadata.json replaced in S3 is refused (ChecksumMismatch); the sealed one is accepted', async () => {
    const c = sealed();
    await uploadCheckpoint(c.ctx, { checkpointId: c.id, metadataSha256: c.metadataSha256 });
    const other = localNodeContext('integrity-other', path.join(root, `${c.id}-other`));
    const ok = await fetchCheckpoint(other, { checkpointId: c.id, metadataSha256: c.metadataSha256 });
    expect(ok.source).toBe('s3');
    fs.rmSync(other.dataDir, { recursive: true, force: true });
    // Replaced: same files named, other bytes (e.g. an edited createdAt).
    const md = JSON.parse((await object(c.id, METADATA_FILE)).toString('utf8')) as Metadata;
    const s3 = makeS3Client(c.ctx.s3);
    await s3.send(
      new PutObjectCommand({
        Bucket: c.ctx.s3.bucket,
        Key: `checkpoints/${c.id}/${METADATA_FILE}`,
        Body: JSON.stringify({ ...md, createdAt: '2020-01-01T00:00:00.000Z' }),
      }),
    );
    s3.destroy();
    const e = await failure(fetchCheckpoint(other, { checkpointId: c.id, metadataSha256: c.metadataSha256 }));
    expect(e.type).toBe(ErrorType.ChecksumMismatch);
    expect(e.message).toContain(METADATA_FILE);
    expect(fs.existsSync(path.join(other.dataDir, 'checkpoints', c.id))).toBe(false);
  });

  test('a corrupt local copy is set aside and fetched again from S3, so the next restore finds a good one', async () => {
    const c = sealed();
    await uploadCheckpoint(c.ctx, { checkpointId: c.id, metadataSha256: c.metadataSha256 });
    flipByte(path.join(c.dir, 'images/pages-1.img'), 5);
    const r = await fetchCheckpoint(c.ctx, { checkpointId: c.id, metadataSha256: c.metadataSha256 });
    expect(r.source).toBe('s3');
    expect(r.dir).toBe(c.dir);
    expect(sha(fs.readFileSync(path.join(c.dir, 'images/pages-1.img')))).toBe(sha(c.large));
    const aside = fs.readdirSync(path.join(c.ctx.dataDir, 'corrupt'));
    expect(aside).toHaveLength(1);
    expect(fs.readFileSync(path.join(c.ctx.dataDir, 'corrupt', aside[0], 'CORRUPT'), 'utf8')).toContain(
      'images/pages-1.img',
    );
    // The next fetch uses the local copy again: it verifies now.
    expect((await fetchCheckpoint(c.ctx, { checkpointId: c.id, metadataSha256: c.metadataSha256 })).source).toBe(
      'nvme',
    );
  });

  test('a local metadata.json that differs from its seal counts as corrupt too', async () => {
    const c = sealed();
    await uploadCheckpoint(c.ctx, { checkpointId: c.id, metadataSha256: c.metadataSha256 });
    const mdFile = path.join(c.dir, METADATA_FILE);
    fs.writeFileSync(mdFile, JSON.stringify(JSON.parse(fs.readFileSync(mdFile, 'utf8'))));
    const r = await fetchCheckpoint(c.ctx, { checkpointId: c.id, metadataSha256: c.metadataSha256 });
    expect(r.source).toBe('s3');
    expect(sha(fs.readFileSync(mdFile))).toBe(c.metadataSha256);
  });
});

describe('the S3 catalogue', () => {
  test('lists and reads checkpoints by their committed metadata.json only', async () => {
    const c = sealed();
    const d = sealed();
    await uploadCheckpoint(c.ctx, { checkpointId: c.id, metadataSha256: c.metadataSha256 });
    flipByte(path.join(d.dir, 'images/core-1.img'), 1);
    await uploadCheckpoint(d.ctx, { checkpointId: d.id }).catch(() => undefined); // refused: no metadata.json
    const ids = await listS3CheckpointIds(c.ctx.s3);
    expect(ids).toContain(c.id);
    expect(ids).not.toContain(d.id);
    const found = await readS3Checkpoint(c.ctx.s3, c.id);
    expect(found?.metadata.jobId).toBe('job-integrity');
    expect(found?.metadataSha256).toBe(c.metadataSha256);
    expect(await readS3Checkpoint(c.ctx.s3, d.id)).toBeNull();
  });
});
