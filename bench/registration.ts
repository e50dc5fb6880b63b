/**
 * A reconnect storm: N lightweight in-process agents register with the control plane at once, then heartbeat
 * for a while. "Lightweight": each one only signals its node's registry workflow the way a real agent does
 * (heartbeat + inventory report); none runs a worker or any node activity. The control worker is the real
 * one, in its own process, on a private local stack (Temporal dev server with SQLite).
 *
 * Prints p50/p99 registration latency (signal accepted by Temporal, then the node Ready in its workflow) and
 * the control worker's memory, each against a baseline measured in the same run: one agent registering on an
 * otherwise idle control plane. Timings are figures to read, never a pass/fail.
 *
 *   npm run bench:registration -- [--agents 1000] [--heartbeat-seconds 30]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Command, InvalidArgumentError } from 'commander';
import type { Client } from '@temporalio/client';
import type { NodeInventory } from '../activities/node/inventory';
import { KybernateClient } from '../clients/api';
import { configFromStack, down, up } from '../deploy/local/stack';
import { startControlWorker } from '../deploy/local/workers';
import { registryHeartbeat, registryReport } from '../workers/registry';
import type { NodeRecord } from '../common/node';
import { nodeWorkflowId } from '../common/queues';
import { table } from './harness';

const positive = (flag: string) => (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`${flag} must be a positive integer`);
  return n;
};

const opts = new Command()
  .option('--agents <n>', 'agents registering at once', positive('--agents'), 1000)
  .option('--heartbeat-seconds <s>', 'how long they heartbeat after registering', positive('--heartbeat-seconds'), 30)
  .option('--baseline <n>', 'single registrations on an idle control plane', positive('--baseline'), 20)
  .parse()
  .opts<{ agents: number; heartbeatSeconds: number; baseline: number }>();

const HEARTBEAT_MS = 5_000;
const TIMEOUT_MS = 15_000;

function inventory(node: string): NodeInventory {
  return {
    node,
    zone: `zone-${node.charCodeAt(node.length - 1) % 3}`,
    vramSource: 'declared',
    gpus: [],
    totalVramBytes: 80 * 1024 ** 3,
    freeVramBytes: 80 * 1024 ** 3,
    freeDiskBytes: 1024 ** 4,
    criuVersion: 'bench (no CRIU: lightweight agent)',
    reportedAt: new Date().toISOString(),
  };
}

/** One agent's registration, as the real agent does it: a heartbeat (registers the run), then its inventory. */
async function register(client: Client, node: string): Promise<{ acceptedMs: number }> {
  const t0 = performance.now();
  await registryHeartbeat(client, node, {
    agentRun: `${node}/bench/${process.pid}`,
    heartbeatMs: HEARTBEAT_MS,
    timeoutMs: TIMEOUT_MS,
  });
  await registryReport(client, node, TIMEOUT_MS, inventory(node));
  return { acceptedMs: performance.now() - t0 };
}

async function ready(client: Client, node: string): Promise<boolean> {
  const rec = await client.workflow
    .getHandle(nodeWorkflowId(node))
    .query<NodeRecord>('status')
    .catch(() => null);
  return rec?.state === 'Ready' && rec.inventory !== null;
}

const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
};
const ms = (x: number): string => `${x.toFixed(0)} ms`;
const mib = (b: number): string => `${(b / 1024 ** 2).toFixed(0)} MiB`;
const ratio = (x: number, base: number): string => `${(x / base).toFixed(2)}x`;

function rssBytes(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

/** Registers every node at once; for each, the time its signals took and the time until its registry said Ready. */
async function storm(
  client: Client,
  nodes: string[],
): Promise<{ accepted: number[]; ready: number[]; failed: number; allReadyMs: number }> {
  const t0 = performance.now();
  const accepted: number[] = [];
  let failed = 0;
  await Promise.all(
    nodes.map((n) =>
      register(client, n).then(
        (r) => void accepted.push(r.acceptedMs),
        () => void failed++,
      ),
    ),
  );
  // Ready as the control worker saw it (its workflow task ran): polled, so a node's figure is an upper bound.
  const readyAt = new Map<string, number>();
  while (readyAt.size < nodes.length - failed && performance.now() - t0 < 600_000) {
    const left = nodes.filter((n) => !readyAt.has(n));
    for (let i = 0; i < left.length; i += 50) {
      await Promise.all(
        left.slice(i, i + 50).map(async (n) => {
          if (await ready(client, n)) readyAt.set(n, performance.now() - t0);
        }),
      );
    }
  }
  return { accepted, ready: [...readyAt.values()], failed, allReadyMs: performance.now() - t0 };
}

async function main(): Promise<void> {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'kybernate-bench-'));
  const state = await up({ home, ownerPid: process.pid, log: () => undefined });
  try {
    const worker = await startControlWorker(state);
    const k = await KybernateClient.connect(configFromStack(state));
    try {
      // Baseline: one agent at a time on an idle control plane (the first one warms the worker up, unmeasured).
      await storm(k.client, ['warmup']);
      const base: number[] = [];
      const baseReady: number[] = [];
      for (let i = 0; i < opts.baseline; i++) {
        const r = await storm(k.client, [`base-${i}`]);
        base.push(...r.accepted);
        baseReady.push(...r.ready);
      }
      const rssIdle = rssBytes(worker.pid);

      const nodes = Array.from({ length: opts.agents }, (_, i) => `storm-${String(i).padStart(4, '0')}`);
      const s = await storm(k.client, nodes);
      const rssStorm = rssBytes(worker.pid);

      // Steady state: every agent heartbeats every 5 s, staggered as real agents' timers are.
      const beats: number[] = [];
      let beatFailures = 0;
      const until = performance.now() + opts.heartbeatSeconds * 1000;
      await Promise.all(
        nodes.map(async (n, i) => {
          await sleep((i / nodes.length) * HEARTBEAT_MS);
          while (performance.now() < until) {
            const t = performance.now();
            await registryHeartbeat(k.client, n, {
              agentRun: `${n}/bench/${process.pid}`,
              heartbeatMs: HEARTBEAT_MS,
              timeoutMs: TIMEOUT_MS,
            }).then(
              () => beats.push(performance.now() - t),
              () => beatFailures++,
            );
            await sleep(Math.max(0, HEARTBEAT_MS - (performance.now() - t)));
          }
        }),
      );
      const rssBeats = rssBytes(worker.pid);
      let stillReady = 0;
      for (let i = 0; i < nodes.length; i += 50)
        stillReady += (await Promise.all(nodes.slice(i, i + 50).map((n) => ready(k.client, n)))).filter(Boolean).length;

      const b50 = pct(base, 50);
      const r50 = pct(baseReady, 50);
      console.log(
        `\n${opts.agents} lightweight in-process agents (signals only: no worker, no node activities), one real control worker, local dev server; ${os.cpus().length} cores`,
      );
      table('registration (baseline: one agent alone on an idle control plane, same run)', [
        ['', 'p50', 'p99', 'max', 'p50 vs baseline p50', 'p99 vs baseline p50'],
        [
          'baseline: signals accepted',
          ms(b50),
          ms(pct(base, 99)),
          ms(Math.max(...base)),
          '1.00x',
          ratio(pct(base, 99), b50),
        ],
        [
          'baseline: Ready in its workflow',
          ms(r50),
          ms(pct(baseReady, 99)),
          ms(Math.max(...baseReady)),
          '1.00x',
          ratio(pct(baseReady, 99), r50),
        ],
        [
          `storm of ${opts.agents}: signals accepted`,
          ms(pct(s.accepted, 50)),
          ms(pct(s.accepted, 99)),
          ms(Math.max(...s.accepted)),
          ratio(pct(s.accepted, 50), b50),
          ratio(pct(s.accepted, 99), b50),
        ],
        [
          `storm of ${opts.agents}: Ready in its workflow`,
          ms(pct(s.ready, 50)),
          ms(pct(s.ready, 99)),
          ms(Math.max(...s.ready)),
          ratio(pct(s.ready, 50), r50),
          ratio(pct(s.ready, 99), r50),
        ],
        [
          `heartbeats (${opts.heartbeatSeconds} s, every 5 s)`,
          ms(pct(beats, 50)),
          ms(pct(beats, 99)),
          ms(Math.max(...beats)),
          ratio(pct(beats, 50), b50),
          ratio(pct(beats, 99), b50),
        ],
      ]);
      table('control worker memory (RSS)', [
        ['idle (after baseline)', 'after the storm', `after ${opts.heartbeatSeconds} s of heartbeats`, 'storm vs idle'],
        [mib(rssIdle), mib(rssStorm), mib(rssBeats), ratio(rssStorm, rssIdle)],
      ]);
      console.log(
        `\nregistration failures: ${s.failed}; all Ready after ${(s.allReadyMs / 1000).toFixed(1)} s; heartbeats sent ${beats.length}, failed ${beatFailures}; Ready at the end: ${stillReady}/${nodes.length}`,
      );
    } finally {
      await k.close();
    }
  } finally {
    await down({ home, log: () => undefined });
    fs.rmSync(home, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(`bench failed: ${(e as Error).stack}`);
  process.exit(1);
});
