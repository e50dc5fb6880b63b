import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import pino from 'pino';
import { CreateBucketCommand } from '@aws-sdk/client-s3';
import type { NodeContext } from '../activities/node/context';
import { checkpointDir, s3Prefix } from '../activities/node/context';
import { downloadFile, fetchCheckpoint } from '../activities/node/fetch';
import { procStatFields } from '../activities/node/process';
import { listFiles } from '../activities/node/seal';
import { uploadCheckpoint } from '../activities/node/upload';
import { makeS3Client, transferPlan } from '../activities/s3-client';
import type { FileEntry } from '../common/metadata';
import { BIN, REPO_ROOT } from '../deploy/local/paths';
import type { StackState } from '../deploy/local/stack';
import { benchStack, dropCaches, nodeCheckpointDir, persistedCopy, startPattern, table, timed } from './harness';

/**
 * Upload and download of the same checkpoint files by MinIO's own client (`mc cp --recursive`, the yardstick)
 * and by our upload and fetch activities (called directly with a NodeContext), against the same MinIO in the
 * same run, the page cache dropped before each side. The files are a real checkpoint (CRIU dump) of a pattern
 * process of KYBERNATE_BENCH_GIB GiB. Timings are figures, never a pass/fail.
 */
async function main(): Promise<void> {
  const sizes = (process.env.KYBERNATE_BENCH_GIB ?? '1,4').split(',').map(Number);
  execFileSync('bash', [path.join(REPO_ROOT, 'deploy', 'local', 'provision.sh'), 'mc'], { stdio: 'inherit' });
  const { state, k, close } = await benchStack(['bench-a']);
  const minio = state.processes.find((p) => p.component === 'minio')?.pid;
  if (minio === undefined) throw new Error('no MinIO process in the stack');
  const rows = [
    [
      'files',
      'upload mc',
      'upload ours',
      'ours/mc',
      '(ours, 8 parts at once)',
      'download mc',
      'download ours',
      'ours/mc',
      '(ranged GETs)',
    ],
  ];
  const cpuRows = [['files', 'upload mc', 'upload ours', 'download mc', 'download ours']];
  const notes: string[] = [];
  try {
    for (const gib of sizes) {
      const mib = Math.round(gib * 1024);
      const job = `tx-${gib}`;
      await startPattern(k, 'bench-a', job, mib);
      const { request } = await k.startCheckpoint({ target: job, node: 'bench-a', checkpointId: `${job}-ck` });
      const s = await k.checkpointResult(request.checkpointId);
      if (s.phase !== 'Durable') throw new Error(`checkpoint ended ${s.phase}: ${s.failureReason}`);
      const src = await persistedCopy(nodeCheckpointDir(state, 'bench-a', `${job}-ck`));
      const bytes = listFiles(src).reduce((n, f) => n + fs.statSync(path.join(src, f)).size, 0);
      const largest = Math.max(...listFiles(src).map((f) => fs.statSync(path.join(src, f)).size));
      const plan = transferPlan(largest);
      notes.push(
        `${gib} GiB: ${listFiles(src).length} files, ${(bytes / 1e6).toFixed(0)} MB, largest ${(largest / 1e6).toFixed(0)} MB: ` +
          `part ${plan.partSize >> 20} MiB x ${plan.concurrency} at once`,
      );
      const work = path.join(state.home, 'transfer', `g${gib}`);
      // Our side reads the same bytes from its own data dir (the upload activity finds a checkpoint by id there).
      // Each of our uploads goes to a bucket of its own: the workflow's upload already put these chunks in the
      // stack's bucket, and content-addressed storage would send none of them again.
      const up = await ctxFor(state, path.join(work, 'up'), `bench-ours-${gib}-${Date.now().toString(36)}`);
      const upEight = await ctxFor(state, path.join(work, 'up'), `bench-eight-${gib}-${Date.now().toString(36)}`);
      const down = await ctxFor(state, path.join(work, 'down'), up.s3.bucket);
      const oursId = `ours-${gib}`;
      fs.mkdirSync(path.dirname(checkpointDir(up, oursId)), { recursive: true });
      fs.cpSync(src, checkpointDir(up, oursId), { recursive: true });
      // The same upload with the earlier fixed default of 8 parts in flight, for comparison.
      const eightId = `eight-${gib}`;
      fs.cpSync(src, checkpointDir(up, eightId), { recursive: true });
      const mcEnv = {
        ...process.env,
        MC_CONFIG_DIR: path.join(work, 'mc-config'),
        [`MC_HOST_bench`]: mcHost(state),
      };
      const mc = (args: string[]): Promise<Cpu> => clientCpu(minio, async () => mcCpuSeconds(mcEnv, args));
      const ours = async <T>(fn: () => Promise<T>): Promise<[T, Cpu]> => {
        let result: [T] | undefined;
        const cpu = await clientCpu(minio, async () => {
          const before = process.cpuUsage();
          result = [await fn()];
          const used = process.cpuUsage(before);
          return (used.user + used.system) / 1e6;
        });
        return [result![0], cpu];
      };
      const bucket = state.s3.bucket;

      dropCaches();
      const [mcUpCpu, mcUp] = await timed(() => mc(['cp', '--recursive', `${src}/`, `bench/${bucket}/mc-${gib}/`]));
      dropCaches();
      const [[, oursUpCpu], oursUp] = await timed(() => ours(() => uploadCheckpoint(up, { checkpointId: oursId })));
      dropCaches();
      const [, eightUp] = await timed(() => uploadCheckpoint(upEight, { checkpointId: eightId, concurrency: 8 }));

      dropCaches();
      const mcDest = path.join(work, 'mc-down');
      const [mcDownCpu, mcDown] = await timed(() =>
        mc(['cp', '--recursive', `bench/${bucket}/mc-${gib}/`, `${mcDest}/`]),
      );
      dropCaches();
      const [[r, oursDownCpu], oursDown] = await timed(() =>
        ours(() => fetchCheckpoint(down, { checkpointId: oursId })),
      );
      if (r.source !== 's3') throw new Error(`fetch took the ${r.source} copy, not S3`);
      // The alternative: large files as parallel ranged GETs (transferPlan's parts in flight).
      const chunked = r.metadata.files.some((f) => f.chunks);
      dropCaches();
      const [, singleDown] = chunked
        ? [undefined, NaN]
        : await timed(() => downloadOneGetEach(up, r.metadata.files, oursId, path.join(work, 'single')));
      const mbs = (ms: number): string => `${(bytes / 1e6 / (ms / 1000)).toFixed(0)} MB/s`;
      rows.push([
        `${gib} GiB (${(bytes / 1e6).toFixed(0)} MB)`,
        mbs(mcUp),
        mbs(oursUp),
        (mcUp / oursUp).toFixed(2),
        mbs(eightUp),
        mbs(mcDown),
        mbs(oursDown),
        (mcDown / oursDown).toFixed(2),
        chunked ? 'n/a (chunks)' : mbs(singleDown),
      ]);
      const perGb = (c: Cpu): string =>
        `${(c.client / (bytes / 1e9)).toFixed(2)} + ${(c.minio / (bytes / 1e9)).toFixed(2)}`;
      cpuRows.push([`${gib} GiB`, perGb(mcUpCpu), perGb(oursUpCpu), perGb(mcDownCpu), perGb(oursDownCpu)]);
      if (chunked)
        notes.push(
          `${gib} GiB: ours = format v2, the pages images as content-addressed chunks (each PUT after a HEAD), fetched 8 chunks at once`,
        );
      fs.rmSync(work, { recursive: true, force: true });
      fs.rmSync(nodeCheckpointDir(state, 'bench-a', `${job}-ck`), {
        recursive: true,
        force: true,
      });
    }
  } finally {
    await close();
  }
  table(
    'S3 transfer of one checkpoint (MinIO on loopback, same files, page cache dropped before each), ours/mc = speed ratio, >= 1.0: ours as fast',
    rows,
  );
  console.log(`  ${notes.join('\n  ')}`);
  table(
    `CPU seconds per GB moved, client + MinIO (user + system; this machine: ${os.cpus().length} cores shared by both). Ours includes a SHA-256 of every byte (each chunk is named and checked by it)`,
    cpuRows,
  );
}

/** CPU seconds a transfer cost: the client's (as `measure` reports them) and MinIO's (from /proc) over the same span. */
interface Cpu {
  client: number;
  minio: number;
}

async function clientCpu(minioPid: number, measure: () => Promise<number>): Promise<Cpu> {
  const before = cpuSecondsOf(minioPid);
  const client = await measure();
  return { client, minio: cpuSecondsOf(minioPid) - before };
}

/** Clock ticks per second of /proc's CPU times. */
const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());

/** CPU seconds a process has used so far, user + system. */
function cpuSecondsOf(pid: number): number {
  const f = procStatFields(pid);
  return (Number(f[11]) + Number(f[12])) / CLK_TCK;
}

/** Runs mc and returns its CPU seconds, user + system, as bash's `time` reports them: Node has no rusage of a child. */
function mcCpuSeconds(env: NodeJS.ProcessEnv, args: string[]): number {
  const r = spawnSync(
    'bash',
    ['-c', 'TIMEFORMAT="cpu %U %S"; time "$0" "$@" >/dev/null', BIN.mc, '--quiet', '--no-color', ...args],
    { env, encoding: 'utf8' },
  );
  const m = /cpu ([\d.]+) ([\d.]+)\s*$/.exec(r.stderr);
  if (r.status !== 0 || !m) throw new Error(`mc ${args.join(' ')}: exit ${r.status}: ${r.stderr}`);
  return Number(m[1]) + Number(m[2]);
}

async function downloadOneGetEach(
  ctx: NodeContext,
  files: FileEntry[],
  checkpointId: string,
  dest: string,
): Promise<void> {
  const s3 = makeS3Client(ctx.s3);
  try {
    const progress = { done: 0, total: 0 };
    for (const f of files) {
      const sum = await downloadFile(
        s3,
        ctx.s3.bucket,
        s3Prefix(checkpointId) + f.path,
        path.join(dest, f.path),
        f.size,
        progress,
        undefined,
        {
          partSize: transferPlan(f.size).partSize,
          concurrency: 1,
        },
      );
      if (sum !== f.sha256) throw new Error(`${f.path}: sha256 ${sum}, sealed ${f.sha256}`);
    }
  } finally {
    s3.destroy();
  }
}

async function ctxFor(state: StackState, dataDir: string, bucket: string): Promise<NodeContext> {
  fs.mkdirSync(dataDir, { recursive: true });
  const ctx: NodeContext = {
    node: 'bench',
    zone: null,
    dataDir,
    criuBin: BIN.criu,
    initBin: null,
    shimBin: BIN.shim,
    criuActionScript: null,
    declaredVramBytes: null,
    stagingDir: null,
    s3: {
      endpoint: state.s3.endpoint,
      region: state.s3.region,
      accessKeyId: state.s3.accessKeyId,
      secretAccessKey: state.s3.secretAccessKey,
      bucket,
    },
    logger: pino({ level: 'warn' }),
  };
  const s3 = makeS3Client(ctx.s3);
  try {
    await s3.send(new CreateBucketCommand({ Bucket: bucket }));
  } catch (e) {
    if ((e as Error).name !== 'BucketAlreadyOwnedByYou') throw e;
  } finally {
    s3.destroy();
  }
  return ctx;
}

/** mc's alias from the environment (MC_HOST_<alias>), so the bench writes no mc config anywhere else. */
function mcHost(state: StackState): string {
  const u = new URL(state.s3.endpoint);
  return `${u.protocol}//${encodeURIComponent(state.s3.accessKeyId)}:${encodeURIComponent(state.s3.secretAccessKey)}@${u.host}`;
}

main().catch((e: unknown) => {
  console.error(`bench failed: ${(e as Error).stack}`);
  process.exit(1);
});
