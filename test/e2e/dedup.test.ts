import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { GetObjectCommand, HeadObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { fetchCheckpoint } from '../../activities/node/fetch';
import { makeS3Client } from '../../activities/s3-client';
import type { KybernateClient } from '../../clients/api';
import type { CheckpointStatus } from '../../common/checkpoint';
import type { RestoreStatus } from '../../common/restore';
import { FORMAT_V1, FORMAT_V2, METADATA_FILE, type Metadata, MetadataSchema } from '../../common/metadata';
import { configFromStack, unregisterProcess } from '../../deploy/local/stack';
import { startControlWorker } from '../../deploy/local/workers';
import { applyChunkGcSchedule, chunkGcScheduleFromEnv } from '../../workers/chunk-gc-config';
import pino from 'pino';
import { CHUNK_GC_WORKFLOW_ID, type ChunkGcResult } from '../../common/chunk-gc';
import type { ChunkGcScheduleJson } from '../../clients/json-output';
import { recordHistory } from '../support/histories';
import { Agent, client, lastTick, localNodeContext, output, PATTERN, PYTHON, stack, until } from '../support/stack';

/**
 * Content-addressed checkpoints on the real stack: a second checkpoint of a job whose memory barely changed,
 * and a checkpoint of a second job with the same memory, send only what the bucket lacks; the collection of
 * unnamed chunks keeps off a checkpoint in flight; an old-format checkpoint (whole files) still restores.
 */
const MiB = 2 ** 20;
let k: KybernateClient;
const agents: Agent[] = [];

beforeAll(async () => {
  k = await client();
  agents.push(await Agent.start({ node: 'dd-a', declaredVramBytes: 8 * 2 ** 30 }));
  // An agent that stores whole files (KYBERNATE_S3_CHUNKS=false): what agents before chunks wrote (format v1).
  agents.push(
    await Agent.start({ node: 'dd-v1', declaredVramBytes: 8 * 2 ** 30, env: { KYBERNATE_S3_CHUNKS: 'false' } }),
  );
});
afterAll(async () => {
  for (const a of agents) await a.stop();
  await k.close();
});

/** The CLI as an operator runs it, against the shared stack (the built dist/). */
function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [path.resolve(__dirname, '../../dist/clients/cli.js'), ...args], {
    env: { ...process.env, KYBERNATE_HOME: stack().home },
    encoding: 'utf8',
    timeout: 60000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A pattern workload; `seed` decides its memory (two jobs with one seed hold the same bytes). */
async function workload(node: string, job: string, mib: number, seed = job): Promise<{ pid: number; logFile: string }> {
  const info = await k.runWorkload({ node, jobId: job, command: [PYTHON, PATTERN, String(mib), seed] });
  await until(`${job} ticking`, () => lastTick(info.logFile) >= 2, 60000);
  return info;
}

async function checkpoint(job: string, node: string, id: string, leaveRunning: boolean): Promise<CheckpointStatus> {
  const { request } = await k.startCheckpoint({ target: job, node, checkpointId: id, leaveRunning });
  const s = await k.checkpointResult(request.checkpointId);
  expect(s.phase).toBe('Durable');
  expect(s.tier).toBe('s3');
  return s;
}

async function metadataInS3(id: string): Promise<Metadata> {
  const s3 = makeS3Client(configFromStack(stack()).s3);
  try {
    const r = await s3.send(
      new GetObjectCommand({ Bucket: stack().s3.bucket, Key: `checkpoints/${id}/${METADATA_FILE}` }),
    );
    return MetadataSchema.parse(JSON.parse(await r.Body!.transformToString()));
  } finally {
    s3.destroy();
  }
}

const totalBytes = (md: Metadata): number => md.files.reduce((n, f) => n + f.size, 0);

/** Restored on its node, it runs on from its counter and its memory is the pattern it last wrote. */
async function restoredWithState(
  id: string,
  node: string,
  logFile: string,
  tick: number,
  check: (s: RestoreStatus) => void = () => undefined,
): Promise<number> {
  const r = await k.startRestore({ checkpointId: id, node });
  const s = await k.restoreResult(r.workflowId);
  expect(s.phase).toBe('Running');
  check(s);
  await until('progress after restore', () => lastTick(logFile) > tick + 2, 30000);
  const verified = output(logFile).filter((l) => l.includes('pattern_ok=')).length;
  process.kill(s.pid!, 'SIGUSR1');
  await until(
    'pattern verified',
    () => output(logFile).filter((l) => l.includes('pattern_ok=')).length > verified,
    20000,
  );
  expect(output(logFile).some((l) => l.includes('pattern_ok=False'))).toBe(false);
  return s.pid!;
}

describe('content-addressed checkpoints, end to end', () => {
  test('a second checkpoint after 5% of the memory changed sends a small part of the first; it restores with that change', async () => {
    const w = await workload('dd-a', 'dd-job', 192);
    const first = await checkpoint('dd-job', 'dd-a', 'dd-job-1', true);
    process.kill(w.pid, 'SIGUSR2');
    await until('memory churned', () => output(w.logFile).some((l) => l.startsWith('churned generation=1')), 20000);
    const second = await checkpoint('dd-job', 'dd-a', 'dd-job-2', false);
    const md = await metadataInS3('dd-job-2');
    expect(md.format).toBe(FORMAT_V2);
    expect(first.upload!.bytesSent).toBeGreaterThan(190 * MiB);
    // 5% of 192 MiB changed, plus the chunks around its edges and the small images.
    expect(second.upload!.bytesSent).toBeLessThan(first.upload!.bytesSent * 0.2);
    expect(second.upload!.bytesReused!).toBeGreaterThan(totalBytes(md) * 0.75);
    // The node holds the first checkpoint but no longer the second (its copy gone, as after a move away and back):
    // the second comes from S3, but the chunks it shares with the first are read from the node's copy of it.
    fs.rmSync(path.join(agents[0].dataDir, 'checkpoints', 'dd-job-2'), { recursive: true, force: true });
    const pid = await restoredWithState('dd-job-2', 'dd-a', w.logFile, lastTick(w.logFile), (s) => {
      expect(s.source).toBe('s3');
      expect(s.bytesFromNode).toBeGreaterThan(totalBytes(md) * 0.75);
    });
    process.kill(pid, 'SIGKILL');
  });

  test('a second job holding the same memory (a replica) stores almost nothing new', async () => {
    await workload('dd-a', 'dd-replica-1', 128, 'replica');
    await checkpoint('dd-replica-1', 'dd-a', 'dd-replica-1-ck', true);
    await workload('dd-a', 'dd-replica-2', 128, 'replica');
    const second = await checkpoint('dd-replica-2', 'dd-a', 'dd-replica-2-ck', true);
    const md = await metadataInS3('dd-replica-2-ck');
    // All of the 128 MiB buffer but the chunks at its two edges (they hold other memory too; at most 8 MiB each).
    expect(second.upload!.bytesReused!).toBeGreaterThanOrEqual(128 * MiB - 16 * MiB);
    expect(second.upload!.bytesSent).toBeLessThan(totalBytes(md) * 0.2);
    for (const j of ['dd-replica-1', 'dd-replica-2']) await k.stopWorkload({ node: 'dd-a', jobId: j });
  });

  test('the collection keeps off a checkpoint in flight; after it, the chunks no checkpoint names are gone and every checkpoint restores', async () => {
    const w = await workload('dd-a', 'dd-gc', 160);
    const { request } = await k.startCheckpoint({ target: 'dd-gc', node: 'dd-a', checkpointId: 'dd-gc-1' });
    // While its upload holds the lock, the collection deletes nothing.
    await until(
      'the upload under way',
      async () => {
        const s = await k.describeCheckpoint('dd-gc-1');
        return 'phase' in s && s.phase === 'Uploading' ? true : null;
      },
      60000,
      50,
    );
    const during = await k.collectChunks({ minAgeMs: 1000 });
    const s = await k.checkpointResult(request.checkpointId);
    expect(s.phase).toBe('Durable');
    if (during.outcome === 'collected') {
      // The upload's lock came first only if the collection found none: then it ran before any chunk was reused.
      expect(during.reason).toBeNull();
    } else expect(during.reason).toMatch(/uploads in flight \(.*dd-gc-1/);
    const after = await k.collectChunks({ minAgeMs: 1000 });
    expect(after.outcome).toBe('collected');
    await recordHistory('chunk-gc', k.client.workflow.getHandle(CHUNK_GC_WORKFLOW_ID));
    const dir = fs.mkdtempSync(path.join(stack().home, 'dd-verify-'));
    const f = await fetchCheckpoint(localNodeContext('dd-verifier', dir), { checkpointId: 'dd-gc-1' });
    expect(f.source).toBe('s3');
    fs.rmSync(dir, { recursive: true, force: true });
    await restoredWithState('dd-gc-1', 'dd-a', w.logFile, lastTick(w.logFile)).then((pid) =>
      process.kill(pid, 'SIGKILL'),
    );
  });

  test('the chunk-gc schedule, set through the CLI and triggered, collects as chunk-gc: an unnamed chunk goes, shown by show; delete ends it', async () => {
    // Refused, naming the flag, before anything is created.
    const tooOften = cli(['gc-schedule', 'set', '--every', '30s']);
    expect(tooOften.status).toBe(2);
    expect(tooOften.stderr).toMatch(/--every.*at least 1m/);
    expect((JSON.parse(cli(['gc-schedule', 'show', '--json']).stdout) as ChunkGcScheduleJson).schedule).toBeNull();

    // A chunk no checkpoint names (what retention leaves behind), stored as uploads store them.
    const bytes = randomBytes(64 * 1024);
    const sha = createHash('sha256').update(bytes).digest();
    const key = `chunks/${sha.toString('hex')}`;
    const s3 = makeS3Client(configFromStack(stack()).s3);
    try {
      await s3.send(
        new PutObjectCommand({
          Bucket: stack().s3.bucket,
          Key: key,
          Body: bytes,
          ChecksumAlgorithm: 'SHA256',
          ChecksumSHA256: sha.toString('base64'),
        }),
      );
      const set = cli(['gc-schedule', 'set', '--every', '6h', '--min-age', '1s', '--json']);
      expect(set.status).toBe(0);
      const created = (JSON.parse(set.stdout) as ChunkGcScheduleJson).schedule!;
      expect(created).toMatchObject({ everyMs: 6 * 3_600_000, collection: { minAgeMs: 1000 }, paused: false });
      expect(created.nextRunAt.length).toBeGreaterThan(0);
      // Set again: the same schedule, its interval changed.
      const changed = JSON.parse(cli(['gc-schedule', 'set', '--every', '2h', '--min-age', '1s', '--json']).stdout);
      expect((changed as ChunkGcScheduleJson).schedule?.everyMs).toBe(2 * 3_600_000);

      await new Promise((r) => setTimeout(r, 1500)); // the chunk older than --min-age
      const triggered = cli(['gc-schedule', 'trigger', '--json']);
      expect(triggered.status).toBe(0);
      expect(JSON.parse(triggered.stdout)).toEqual({ action: 'triggered', found: true });
      const last = await until(
        'the triggered collection done',
        async () => (await k.chunkGcSchedule.show())?.lastResult ?? null,
        90000,
        500,
      );
      expect(last).toMatchObject<Partial<ChunkGcResult>>({ outcome: 'collected', reason: null, dryRun: false });
      expect(last.deleted).toBeGreaterThanOrEqual(1);
      const gone = await s3.send(new HeadObjectCommand({ Bucket: stack().s3.bucket, Key: key })).then(
        () => false,
        (e: unknown) => (e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404,
      );
      expect(gone).toBe(true);
      // The collection ran as chunk-gc, the id `kybernate gc` takes: the two never run at once.
      const child = await k.client.workflow.getHandle(CHUNK_GC_WORKFLOW_ID).describe();
      const scheduled = child.parentExecution?.workflowId ?? '';
      expect(scheduled).toMatch(/^chunk-gc-scheduled/);
      await recordHistory('chunk-gc-scheduled', k.client.workflow.getHandle(scheduled));
      const shown = cli(['gc-schedule', 'show']);
      expect(shown.stdout).toMatch(/every 2h, deleting unnamed chunks older than 1s/);
      expect(shown.stdout).toMatch(/last run .*collected, [1-9][0-9]* chunks deleted/);
    } finally {
      s3.destroy();
      expect(JSON.parse(cli(['gc-schedule', 'delete', '--json']).stdout)).toEqual({ action: 'deleted', found: true });
    }
    expect(cli(['gc-schedule', 'show']).stdout).toMatch(/no chunk-gc schedule/);
    expect(JSON.parse(cli(['gc-schedule', 'delete', '--json']).stdout)).toEqual({ action: 'deleted', found: false });
    const none = cli(['gc-schedule', 'trigger']);
    expect(none.status).toBe(1);
    expect(none.stdout).toMatch(/no chunk-gc schedule to trigger/);
  });

  test("a control worker creates the default schedule (6h, 1h) when there is none, never undoes an operator's, and sets what its environment names", async () => {
    const shows = (re: RegExp) => () => re.test(cli(['gc-schedule', 'show']).stdout);
    expect(cli(['gc-schedule', 'show']).stdout).toMatch(/no chunk-gc schedule/);
    // A second control worker, as an operator starts one: neither variable set (the shared stack's are 'off').
    const worker = await startControlWorker(stack(), { KYBERNATE_CHUNK_GC_EVERY: '' });
    const quiet = pino({ level: 'silent' });
    try {
      await until('the default schedule', shows(/every 6h, deleting unnamed chunks older than 1h/), 30000, 500);
      expect(cli(['gc-schedule', 'set', '--every', '2h', '--min-age', '10m']).status).toBe(0);
      // What the worker does at each start: the default keeps the operator's schedule.
      expect(await applyChunkGcSchedule(k.client, chunkGcScheduleFromEnv({}), quiet)).toBe('kept');
      expect(cli(['gc-schedule', 'show']).stdout).toMatch(/every 2h, deleting unnamed chunks older than 10m/);
      // Set in the environment: applied over it.
      const configured = chunkGcScheduleFromEnv({ KYBERNATE_CHUNK_GC_EVERY: '3h' });
      expect(await applyChunkGcSchedule(k.client, configured, quiet)).toBe('updated');
      expect(cli(['gc-schedule', 'show']).stdout).toMatch(/every 3h, deleting unnamed chunks older than 1h/);
      // 'off' touches nothing, even a schedule that is there.
      const off = chunkGcScheduleFromEnv({ KYBERNATE_CHUNK_GC_EVERY: 'off' });
      expect(await applyChunkGcSchedule(k.client, off, quiet)).toBe('off');
      expect(cli(['gc-schedule', 'show']).stdout).toMatch(/every 3h/);
      const deleted = cli(['gc-schedule', 'delete']);
      expect(deleted.stdout).toMatch(
        /deleted \(a control worker creates its default one again .*KYBERNATE_CHUNK_GC_EVERY=off\)/,
      );
      expect(await applyChunkGcSchedule(k.client, off, quiet)).toBe('off');
      expect(cli(['gc-schedule', 'show']).stdout).toMatch(/no chunk-gc schedule/);
    } finally {
      process.kill(worker.pid, 'SIGTERM');
      unregisterProcess(worker.pid, stack().home);
      cli(['gc-schedule', 'delete']);
    }
  });

  test('an old-format checkpoint (whole files, v1) restores on an agent that writes chunks', async () => {
    const w = await workload('dd-v1', 'dd-old', 96);
    await checkpoint('dd-old', 'dd-v1', 'dd-old-1', false);
    const md = await metadataInS3('dd-old-1');
    expect(md.format).toBe(FORMAT_V1);
    expect(md.files.every((f) => f.chunks === undefined && f.sha256 !== undefined)).toBe(true);
    // dd-a has no copy of it: it comes from S3, whole objects, verified file by file.
    const pid = await restoredWithState('dd-old-1', 'dd-a', w.logFile, lastTick(w.logFile));
    process.kill(pid, 'SIGKILL');
  });
});
