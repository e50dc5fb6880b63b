import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { WorkflowFailedError, WorkflowNotFoundError } from '@temporalio/client';
import { makeS3Client } from '../../activities/s3-client';
import { KybernateClient } from '../../clients/api';
import type { CheckpointStatus } from '../../common/checkpoint';
import { checkpointWorkflowId, CONTROL_QUEUE, promotionWorkflowId } from '../../common/queues';
import { configFromStack } from '../../deploy/local/stack';
import type { PromotionStatus } from '../../common/promotion';
import { Agent, alive, client, lastTick, output, PATTERN, PYTHON, stack, until } from '../support/stack';
import { Toxiproxy } from '../support/toxiproxy';

/** Integrity end to end: bad bytes never become Durable, replaced metadata is refused, ids are never reused. */
const GiB = 1024 ** 3;
let k: KybernateClient;
const agents: Agent[] = [];
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const bucket = (): string => stack().s3.bucket;

beforeAll(async () => {
  k = await client();
});
afterAll(async () => {
  for (const a of agents) await a.stop();
  await k.close();
});

async function agent(node: string, extra: Partial<Agent['spec']> = {}): Promise<Agent> {
  const a = await Agent.start({ node, declaredVramBytes: 8 * GiB, ...extra });
  agents.push(a);
  return a;
}

async function workload(node: string, job: string, mib: number): Promise<{ pid: number; logFile: string }> {
  const info = await k.runWorkload({ node, jobId: job, command: [PYTHON, PATTERN, String(mib), job] });
  await until(`${job} ticking`, () => lastTick(info.logFile) >= 2, 30000);
  return info;
}

async function s3Get(key: string): Promise<Buffer | null> {
  const c = makeS3Client(configFromStack(stack()).s3);
  try {
    const r = await c.send(new GetObjectCommand({ Bucket: bucket(), Key: key }));
    return Buffer.from(await r.Body!.transformToByteArray());
  } catch (e) {
    if ((e as Error).name === 'NoSuchKey') return null;
    throw e;
  } finally {
    c.destroy();
  }
}

async function s3Keys(prefix: string): Promise<string[]> {
  const c = makeS3Client(configFromStack(stack()).s3);
  try {
    return ((await c.send(new ListObjectsV2Command({ Bucket: bucket(), Prefix: prefix }))).Contents ?? []).map(
      (o) => o.Key!,
    );
  } finally {
    c.destroy();
  }
}

const status = (id: string): Promise<CheckpointStatus> => k.describeCheckpoint(id);

function flipByte(file: string, offset: number): void {
  const fd = fs.openSync(file, 'r+');
  const b = Buffer.alloc(1);
  fs.readSync(fd, b, 0, 1, offset);
  b[0] ^= 0xff;
  fs.writeSync(fd, b, 0, 1, offset);
  fs.closeSync(fd);
}

async function deleteHistory(workflowId: string): Promise<void> {
  await k.client.workflowService.deleteWorkflowExecution({
    namespace: k.config.namespace,
    workflowExecution: { workflowId },
  });
  await until(
    `history of ${workflowId} gone`,
    async () => {
      try {
        const d = await k.client.workflow.getHandle(workflowId).describe();
        throw new Error(`still there: ${d.status.name}`);
      } catch (e) {
        if (e instanceof WorkflowNotFoundError) return true;
        throw e;
      }
    },
    120000,
    500,
  );
}

describe('integrity, end to end on the real stack', () => {
  test('a byte of the local copy changed between Sealing and Uploading: Failed, never Durable, nothing committed to S3, the workload recorded lost', async () => {
    const tox = new Toxiproxy(stack().toxiproxy!.api);
    const listen = await tox.create('s3-hold', new URL(stack().s3.endpoint).host);
    const a = await agent('i-flip', { stagingDir: null, env: { KYBERNATE_S3_ENDPOINT: `http://${listen}` } });
    const w = await workload('i-flip', 'flip', 64);
    // S3 out of reach holds the upload in its retries, after the seal: the window in which the copy changes.
    await tox.setEnabled('s3-hold', false);
    const { request } = await k.startCheckpoint({
      target: 'flip',
      node: 'i-flip',
      checkpointId: 'flip-1',
      uploadMaxAttempts: 8,
    });
    await until('Uploading', async () => (await status('flip-1')).phase === 'Uploading', 60000, 200);
    // The workload's own pages image, the largest (tini, the namespace's pid 1, has a tiny one of its own).
    const images = path.join(a.dataDir, 'checkpoints', 'flip-1', 'images');
    const pagesName = fs
      .readdirSync(images)
      .filter((f) => /^pages-\d+\.img$/.test(f))
      .sort((x, y) => fs.statSync(path.join(images, y)).size - fs.statSync(path.join(images, x)).size)[0];
    const pages = path.join(images, pagesName);
    expect(fs.statSync(pages).size).toBeGreaterThan(32 << 20); // a multipart upload
    flipByte(pages, fs.statSync(pages).size >> 1);
    await tox.setEnabled('s3-hold', true);
    const s = await k.checkpointResult(request.checkpointId);
    expect(s.phase).toBe('Failed');
    expect(s.failureReason).toMatch(/ChecksumMismatch/);
    expect(s.failureReason).toContain(`images/${pagesName}`);
    expect(s.history.some((h) => h.phase === 'Uploading' && h.outcome === 'ok')).toBe(false);
    expect(s.history.some((h) => h.phase === 'PendingUpload')).toBe(false);
    expect(s.workloadLost).toMatch(/stopped by the dump/);
    expect(alive(w.pid)).toBe(false);
    expect(await s3Keys('checkpoints/flip-1/metadata.json')).toEqual([]);
    expect(await s3Keys(`checkpoints/flip-1/images/${pagesName}`)).toEqual([]);
    // Out of the node's checkpoints, kept for an operator with the reason: the lost workload's only trace.
    expect(fs.existsSync(path.join(a.dataDir, 'checkpoints', 'flip-1'))).toBe(false);
    const aside = fs.readdirSync(path.join(a.dataDir, 'corrupt')).filter((d) => d.startsWith('flip-1-'));
    expect(aside).toHaveLength(1);
    expect(fs.readFileSync(path.join(a.dataDir, 'corrupt', aside[0], 'CORRUPT'), 'utf8')).toContain(pagesName);
    await tox.remove('s3-hold');
  }, 240000);

  test('a replaced metadata.json in S3 is refused on restore: ChecksumMismatch, nothing restored', async () => {
    await agent('i-src');
    const b = await agent('i-dst');
    await workload('i-src', 'meta', 16);
    const { request } = await k.startCheckpoint({ target: 'meta', node: 'i-src', checkpointId: 'meta-1' });
    const s = await k.checkpointResult(request.checkpointId);
    expect(s.phase).toBe('Durable');
    const key = 'checkpoints/meta-1/metadata.json';
    const orig = (await s3Get(key))!;
    expect(sha(orig)).toBe(s.metadataSha256);
    // Replaced with the same files named and one field changed: every file still matches it.
    const md = JSON.parse(orig.toString('utf8')) as { createdAt: string };
    const c = makeS3Client(configFromStack(stack()).s3);
    await c.send(
      new PutObjectCommand({
        Bucket: bucket(),
        Key: key,
        Body: JSON.stringify({ ...md, createdAt: '2020-01-01T00:00:00.000Z' }, null, 2),
      }),
    );
    c.destroy();
    const r = await k.startRestore({ checkpointId: 'meta-1', node: 'i-dst' });
    // The client reads the Failed status; the workflow itself failed (the UI counts it), the cause in its failure.
    expect((await k.restoreResult(r.workflowId)).phase).toBe('Failed');
    const err = await k.client.workflow
      .getHandle(r.workflowId)
      .result()
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    expect(String((err as WorkflowFailedError).cause?.message)).toMatch(/corrupt.*metadata\.json.*sealed as/s);
    expect(fs.existsSync(path.join(b.dataDir, 'checkpoints', 'meta-1'))).toBe(false);
  }, 180000);

  test('a checkpoint whose workflow history was deleted is described, listed and restored from S3; its id is never reused, nothing overwritten', async () => {
    const src = agents.find((x) => x.spec.node === 'i-src') ?? (await agent('i-src'));
    if (!agents.some((x) => x.spec.node === 'i-dst')) await agent('i-dst');
    const w = await workload('i-src', 'gone', 16);
    const { request } = await k.startCheckpoint({ target: 'gone', node: 'i-src', checkpointId: 'gone-1' });
    const s = await k.checkpointResult(request.checkpointId);
    expect(s.phase).toBe('Durable');
    const dumpedTick = lastTick(w.logFile);
    const localMd = path.join(src.dataDir, 'checkpoints', 'gone-1', 'metadata.json');
    const localBefore = fs.readFileSync(localMd);
    const s3Before = (await s3Get('checkpoints/gone-1/metadata.json'))!;

    // While Temporal knows it: the same id is refused.
    await workload('i-src', 'gone2', 16);
    await expect(k.startCheckpoint({ target: 'gone2', node: 'i-src', checkpointId: 'gone-1' })).rejects.toThrow(
      /checkpointId: checkpoint 'gone-1' exists/,
    );

    await deleteHistory(checkpointWorkflowId('gone-1'));
    // describe, list and the CLI answer from S3.
    const d = await k.describeCheckpoint('gone-1');
    expect(d).toMatchObject({ checkpointId: 'gone-1', jobId: 'gone', node: 'i-src', phase: 'Durable', tier: 's3' });
    const env = { ...process.env, KYBERNATE_HOME: stack().home };
    const cli = path.resolve(__dirname, '../../dist/clients/cli.js');
    expect(
      JSON.parse(execFileSync(process.execPath, [cli, 'describe', 'gone-1'], { env, encoding: 'utf8' })).phase,
    ).toBe('Durable');
    const listed = await k.listCheckpoints({ job: 'gone' });
    expect(listed).toEqual([
      expect.objectContaining({ checkpointId: 'gone-1', phase: 'Durable', tier: 's3', source: 's3' }),
    ]);

    // Restored from S3's record, state intact.
    const r = await k.startRestore({ checkpointId: 'gone-1', node: 'i-dst' });
    const rs = await k.restoreResult(r.workflowId);
    expect(rs.phase).toBe('Running');
    expect(rs.source).toBe('s3');
    await until('progress after restore', () => lastTick(w.logFile) > dumpedTick + 2, 30000);
    process.kill(rs.pid!, 'SIGUSR1');
    await until('pattern verified', () => output(w.logFile).some((l) => l.includes('pattern_ok=True')), 20000);
    process.kill(rs.pid!, 'SIGKILL');

    // The id is still taken: S3 remembers it for the client...
    await expect(k.startCheckpoint({ target: 'gone2', node: 'i-src', checkpointId: 'gone-1' })).rejects.toThrow(
      /checkpointId: checkpoint 'gone-1' exists in S3/,
    );
    // ...and a workflow started past the client is refused by the node before anything is touched.
    const forced = k.client.workflow.start('checkpoint', {
      workflowId: checkpointWorkflowId('gone-1'),
      taskQueue: CONTROL_QUEUE,
      args: [{ checkpointId: 'gone-1', jobId: 'gone2', node: 'i-src', leaveRunning: false, reason: 'manual' }],
    });
    const err = await (await forced).result().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    expect(String((err as WorkflowFailedError).cause?.message)).toMatch(/checkpoint 'gone-1' exists on i-src/);
    expect(fs.readFileSync(localMd).equals(localBefore)).toBe(true);
    expect((await s3Get('checkpoints/gone-1/metadata.json'))!.equals(s3Before)).toBe(true);
  }, 240000);

  test("S3 refuses the agent's uploads (no such bucket): PendingUpload with the S3 error; the promotion loop still promotes a later checkpoint, then the refused one once S3 takes it", async () => {
    const tox = new Toxiproxy(stack().toxiproxy!.api);
    const listen = await tox.create('s3-rej', new URL(stack().s3.endpoint).host);
    const a = await agent('i-rej', {
      env: { KYBERNATE_S3_ENDPOINT: `http://${listen}`, KYBERNATE_S3_BUCKET: 'kybernate-no-such-bucket' },
    });
    await workload('i-rej', 'rej', 16);
    const { request: r1 } = await k.startCheckpoint({
      target: 'rej',
      node: 'i-rej',
      checkpointId: 'rej-1',
      uploadMaxAttempts: 4,
    });
    await until('rej-1 PendingUpload', async () => (await status('rej-1')).phase === 'PendingUpload', 60000, 200);
    const s1 = await status('rej-1');
    expect(s1.tier).toBe('nvme');
    expect(
      s1.history
        .filter((h) => h.phase === 'Uploading' && h.outcome === 'failed')
        .map((h) => h.detail)
        .join('\n'),
    ).toMatch(/S3Rejected: .*NoSuchBucket/);
    const loop = k.client.workflow.getHandle(promotionWorkflowId('i-rej'));
    await until(
      'rej-1 set aside by the promotion loop',
      async () => (await loop.query<PromotionStatus>('status')).deferred.some((d) => d.checkpointId === 'rej-1'),
      30000,
      200,
    );

    // The operator fixes the bucket; S3 is out of reach for the next checkpoint, which goes to the same loop.
    await a.stop();
    agents.splice(agents.indexOf(a), 1);
    await tox.setEnabled('s3-rej', false);
    await agent('i-rej', { env: { KYBERNATE_S3_ENDPOINT: `http://${listen}` } });
    await workload('i-rej', 'rej2', 16);
    const { request: r2 } = await k.startCheckpoint({
      target: 'rej2',
      node: 'i-rej',
      checkpointId: 'rej-2',
      uploadMaxAttempts: 2,
    });
    await until('rej-2 PendingUpload', async () => (await status('rej-2')).phase === 'PendingUpload', 60000, 200);
    await tox.setEnabled('s3-rej', true);
    const s2 = await k.checkpointResult(r2.checkpointId);
    expect(s2.phase).toBe('Durable');
    expect(s2.history.some((h) => h.detail.includes('promotion loop'))).toBe(true);
    // The refused one is retried on its own backoff (1 minute first) and goes through now that the bucket is right.
    const s1done = await k.checkpointResult(r1.checkpointId);
    expect(s1done.phase).toBe('Durable');
    expect(s1done.tier).toBe('s3');
    expect((await loop.query<PromotionStatus>('status')).promoted).toEqual(expect.arrayContaining(['rej-1', 'rej-2']));
    expect(await s3Keys('checkpoints/rej-1/metadata.json')).toEqual(['checkpoints/rej-1/metadata.json']);
    await tox.remove('s3-rej');
  }, 360000);
});
