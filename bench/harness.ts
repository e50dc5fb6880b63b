import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Upload } from '@aws-sdk/lib-storage';
import { makeS3Client } from '../activities/s3-client';
import { METADATA_FILE } from '../common/metadata';
import { KybernateClient } from '../clients/api';
import { REPO_ROOT } from '../deploy/local/paths';
import { configFromStack, down, type StackState, up } from '../deploy/local/stack';
import { startAgent, startControlWorker } from '../deploy/local/workers';

export const GiB = 1024 ** 3;
export const PATTERN = path.join(REPO_ROOT, 'deploy', 'workloads', 'pattern.py');

/** A private stack for one benchmark run, torn down at the end (or by the watchdog if the run dies). */
export async function benchStack(
  nodes: string[],
): Promise<{ state: StackState; k: KybernateClient; close: () => Promise<void> }> {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'kybernate-bench-'));
  const state = await up({ home, ownerPid: process.pid, log: () => undefined });
  await startControlWorker(state);
  for (const node of nodes) await startAgent(state, { node, declaredVramBytes: 80 * GiB });
  const k = await KybernateClient.connect(configFromStack(state));
  await warmUp(k, nodes);
  return {
    state,
    k,
    close: async () => {
      await k.close();
      await down({ home, log: () => undefined });
      fs.rmSync(home, { recursive: true, force: true });
    },
  };
}

/**
 * One unmeasured round on a 32 MiB process first: the first workflow of each kind pays one-time costs
 * (worker caches, the placement workflow's start) that no later request pays.
 */
async function warmUp(k: KybernateClient, nodes: string[]): Promise<void> {
  await startPattern(k, nodes[0], 'warmup', 32);
  const { request } = await k.startCheckpoint({ target: 'warmup', node: nodes[0], checkpointId: 'warmup-ck' });
  await k.checkpointResult(request.checkpointId);
  const r = await k.startRestore({ checkpointId: request.checkpointId, node: nodes[nodes.length - 1] });
  const rs = await k.restoreResult(r.workflowId);
  if (rs.pid) process.kill(rs.pid, 'SIGKILL');
}

export async function startPattern(
  k: KybernateClient,
  node: string,
  job: string,
  mib: number,
): Promise<{ pid: number; logFile: string }> {
  const info = await k.runWorkload({ node, jobId: job, command: ['/usr/bin/python3', PATTERN, String(mib), job] });
  for (let i = 0; i < 600; i++) {
    if (fs.existsSync(info.logFile) && fs.readFileSync(info.logFile, 'utf8').includes('tick 2\n')) return info;
    await sleep(200);
  }
  throw new Error(`${job} did not start`);
}

export function run(cmd: string, args: string[]): void {
  execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'] });
}

export async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t0 = process.hrtime.bigint();
  const r = await fn();
  return [r, Number(process.hrtime.bigint() - t0) / 1e6];
}

export function table(title: string, rows: string[][]): void {
  console.log(`\n${title}`);
  const w = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  for (const r of rows) console.log(r.map((c, i) => c.padEnd(w[i])).join('  '));
}

export const secs = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;
export const mibs = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(1)} MiB`;

/**
 * Flushes dirty pages and drops the page cache before each measured side, so that neither side pays for the
 * other's write-back nor reads the other's files from memory.
 */
export function dropCaches(): void {
  try {
    execFileSync('sync');
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
  } catch {
    /* not permitted here: both sides then run with whatever is cached */
  }
}

/** Scheduled-to-completed time of each activity in a workflow's history, e.g. "fetch 4.10s, criuRestore 1.02s". */
export async function activityTimes(k: KybernateClient, workflowId: string): Promise<string> {
  const h = await k.client.workflow.getHandle(workflowId).fetchHistory();
  const ms = (e: { eventTime?: { seconds?: unknown; nanos?: number | null } | null }): number =>
    Number(e.eventTime?.seconds ?? 0) * 1000 + (e.eventTime?.nanos ?? 0) / 1e6;
  const scheduled = new Map<string, { name: string; at: number }>();
  const out: string[] = [];
  for (const e of h.events ?? []) {
    const s = e.activityTaskScheduledEventAttributes;
    if (s) scheduled.set(String(e.eventId), { name: s.activityType?.name ?? '?', at: ms(e) });
    const c = e.activityTaskCompletedEventAttributes;
    if (c) {
      const from = scheduled.get(String(c.scheduledEventId));
      if (from && ms(e) - from.at >= 50) out.push(`${from.name} ${((ms(e) - from.at) / 1000).toFixed(2)}s`);
    }
  }
  return out.join(', ');
}

/** The by-hand upload: each file in turn with the SDK's lib-storage (16 MiB parts, 4 at a time). */
export async function uploadBaseline(
  state: StackState,
  dir: string,
  files: string[],
  keyPrefix: string,
): Promise<void> {
  const s3 = makeS3Client(configFromStack(state).s3);
  try {
    for (const f of files) {
      await new Upload({
        client: s3,
        params: { Bucket: state.s3.bucket, Key: keyPrefix + f, Body: fs.createReadStream(path.join(dir, f)) },
        partSize: 16 << 20,
        queueSize: 4,
      }).done();
    }
  } finally {
    s3.destroy();
  }
}

/** Where a node of the bench stack keeps a checkpoint on its disk. */
export const nodeCheckpointDir = (state: StackState, node: string, checkpointId: string): string =>
  path.join(state.home, 'nodes', node, 'checkpoints', checkpointId);

/** The checkpoint's copy on the node's disk: the persist step may still be writing it when Durable is reported. */
export async function persistedCopy(dir: string): Promise<string> {
  for (let i = 0; i < 1200; i++) {
    if (fs.existsSync(path.join(dir, METADATA_FILE))) return dir;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`${dir}: no persisted copy after 5 minutes`);
}
