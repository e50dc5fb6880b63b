import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { KybernateClient } from '../clients/api';
import { REPO_ROOT } from '../deploy/local/paths';
import { configFromStack, down, type StackState, up } from '../deploy/local/stack';
import { startAgent, startControlWorker } from '../deploy/local/workers';

export const GiB = 1024 ** 3;
export const PATTERN = path.join(REPO_ROOT, 'deploy', 'workloads', 'pattern.py');

/** A private stack for one benchmark run, torn down at the end (or by the watchdog if the run dies). */
export async function benchStack(nodes: string[]): Promise<{ state: StackState; k: KybernateClient; close: () => Promise<void> }> {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'kybernate-bench-'));
  const state = await up({ home, ownerPid: process.pid, log: () => undefined });
  await startControlWorker(state);
  for (const node of nodes) await startAgent(state, { node, declaredVramBytes: 80 * GiB });
  const k = await KybernateClient.connect(configFromStack(state));
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

export async function startPattern(k: KybernateClient, node: string, job: string, mib: number): Promise<{ pid: number; logFile: string }> {
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

/** Drops the page cache so that neither side reads the other's freshly written files from memory. */
export function dropCaches(): void {
  try {
    execFileSync('sync');
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
  } catch {
    /* not permitted here: both sides then run with whatever is cached */
  }
}
