/**
 * A reconnect storm: N lightweight in-process agents register with the control plane at once, then heartbeat
 * for a while. "Lightweight": each one does for liveness what a real agent does, without a worker: it signals
 * its registration and inventory, long-polls its node queue for the liveness watch activity with the raw
 * pollActivityTaskQueue call, and heartbeats that activity every 5 s (client.activity.heartbeat); it runs no
 * other node activity. The control worker is the real
 * one, in its own process, on a private local stack (Temporal dev server with SQLite).
 *
 * Prints p50/p99 registration latency (signal accepted by Temporal, then the node Ready in its workflow) and
 * the control worker's memory, each against a baseline measured in the same run: one agent registering on an
 * otherwise idle control plane. Timings are figures to read, never a pass/fail.
 *
 *   npm run bench:registration -- [--agents 1000] [--heartbeat-seconds 30] [--cached-workflows n]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Command, InvalidArgumentError } from 'commander';
import { Client, Connection } from '@temporalio/client';
import type { NodeInventory } from '../activities/node/inventory';
import { KybernateClient } from '../clients/api';
import { configFromStack, down, up } from '../deploy/local/stack';
import { startControlWorker } from '../deploy/local/workers';
import { registryHeartbeat, registryReport } from '../workers/registry';
import { WatchWatchdog } from '../workers/liveness';
import type { NodeRecord } from '../common/node';
import { nodeQueue, nodeWorkflowId } from '../common/queues';
import { temporalConnectionOptions } from '../common/config';
import { table, timed } from './harness';
import { registeredNodes } from '../activities/control/registry';
import { countedNodes, createStandingActivities } from '../activities/control/standing';
import { tallyZones } from '../common/health';

const positive = (flag: string) => (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`${flag} must be a positive integer`);
  return n;
};

const opts = new Command()
  .option('--agents <n>', 'agents registering at once', positive('--agents'), 1000)
  .option('--heartbeat-seconds <s>', 'how long they heartbeat after registering', positive('--heartbeat-seconds'), 30)
  .option('--baseline <n>', 'single registrations on an idle control plane', positive('--baseline'), 20)
  .option(
    '--cached-workflows <n>',
    "the control worker's workflow cache (KYBERNATE_CONTROL_CACHED_WORKFLOWS); default: the SDK's",
    positive('--cached-workflows'),
  )
  .parse()
  .opts<{ agents: number; heartbeatSeconds: number; baseline: number; cachedWorkflows?: number }>();

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

const agentRun = (node: string): string => `${node}/bench/${process.pid}`;

/** One agent's registration signal (asks for a watch), as the real agent sends it. */
const registration = (client: Client, node: string): Promise<void> =>
  registryHeartbeat(client, node, {
    agentRun: agentRun(node),
    heartbeatMs: HEARTBEAT_MS,
    timeoutMs: TIMEOUT_MS,
    liveness: 'watch',
  });

/** One agent's registration, as the real agent does it: a registration (asks for a watch), then its inventory. */
async function register(client: Client, node: string): Promise<{ acceptedMs: number; registrationMs: number }> {
  const t0 = performance.now();
  await registration(client, node);
  const registrationMs = performance.now() - t0;
  await registryReport(client, node, TIMEOUT_MS, inventory(node));
  return { acceptedMs: performance.now() - t0, registrationMs };
}

interface LivenessStats {
  /** From the agents' start: when each node's first watch reached its agent. */
  watchTaken: Map<string, number>;
  beats: number[];
  beatFailures: number;
  /** Watches that ended under an agent (heartbeat answered not found / cancelled). */
  watchesLost: number;
  /** Registrations sent again by an agent's watchdog (no watch for a node timeout), and those that failed. */
  reregistered: number;
  reregisterFailures: number;
  pollError?: string;
}

/**
 * One lightweight agent's liveness, as a real agent's worker does it: long-poll the node queue for the watch,
 * heartbeat it every HEARTBEAT_MS until the server says it is gone, poll again; and, as the real agent's
 * watchdog (WatchWatchdog, the same class) does, register again when no watch ran for a node timeout (a watch
 * that timed out under a storm leaves the node Unhealthy until its agent registers again). Ends when stop is
 * aborted.
 */
async function livenessLoop(
  client: Client,
  node: string,
  t0: number,
  stop: AbortSignal,
  stats: LivenessStats,
  registeredFirst: Promise<number>,
): Promise<void> {
  const namespace = client.options.namespace;
  const watchdog = new WatchWatchdog(TIMEOUT_MS);
  // As the real agent: the watchdog counts from the moment its first registration was accepted.
  void registeredFirst.then((took) => watchdog.registered(Date.now(), took));
  let registering = false;
  const dog = setInterval(() => {
    if (registering || !watchdog.mustRegister(Date.now())) return;
    registering = true;
    stats.reregistered++;
    const sent = Date.now();
    registration(client, node)
      .then(() => watchdog.registered(Date.now(), Date.now() - sent))
      .catch(() => void stats.reregisterFailures++)
      .finally(() => (registering = false));
  }, HEARTBEAT_MS);
  stop.addEventListener('abort', () => clearInterval(dog));
  while (!stop.aborted) {
    const task = await client.connection
      .withAbortSignal(stop, () =>
        // A long poll needs a deadline (the server refuses one without); it answers empty after about a minute.
        client.connection.withDeadline(Date.now() + 70_000, () =>
          client.workflowService.pollActivityTaskQueue({
            namespace,
            taskQueue: { name: nodeQueue(node) },
            identity: `bench-${node}`,
          }),
        ),
      )
      .catch((e: Error) => {
        if (!stop.aborted && !stats.pollError) {
          stats.pollError = e.message;
          console.error(`bench: poll of ${nodeQueue(node)} failed: ${e.message}`);
        }
        return null;
      });
    if (!task?.taskToken?.length) continue; // the long poll ended empty (or the bench stops)
    if (!stats.watchTaken.has(node)) stats.watchTaken.set(node, performance.now() - t0);
    watchdog.started();
    const token = task.taskToken;
    while (!stop.aborted) {
      const t = performance.now();
      try {
        await client.activity.heartbeat(token, { agentRun: agentRun(node) });
        stats.beats.push(performance.now() - t);
      } catch (e) {
        const gone = /not ?found|cancel/i.test(`${(e as Error).name} ${(e as Error).message}`);
        if (gone) {
          stats.watchesLost++;
          watchdog.ended();
          break;
        }
        stats.beatFailures++;
      }
      await sleep(Math.max(0, HEARTBEAT_MS - (performance.now() - t)), undefined, { signal: stop }).catch(
        () => undefined,
      );
    }
  }
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

/** Each node's first registration, accepted (and how long that took): its agent's watchdog counts from then. */
class Registered {
  private readonly waiting = new Map<string, (tookMs: number) => void>();
  private readonly done = new Map<string, Promise<number>>();
  of(node: string): Promise<number> {
    let p = this.done.get(node);
    if (!p) {
      p = new Promise<number>((r) => this.waiting.set(node, r));
      this.done.set(node, p);
    }
    return p;
  }
  accepted(node: string, tookMs: number): void {
    void this.of(node);
    this.waiting.get(node)?.(tookMs);
  }
}

/** Registers every node at once; for each, the time its signals took and the time until its registry said Ready. */
async function storm(
  client: Client,
  nodes: string[],
  registered: Registered,
): Promise<{ accepted: number[]; ready: number[]; failed: number; allReadyMs: number }> {
  const t0 = performance.now();
  const accepted: number[] = [];
  let failed = 0;
  // A real agent whose first registration fails exits (its supervisor starts it again); these do not retry.
  const failure = (n: string, e: unknown): void => {
    if (failed++ === 0) console.error(`bench: first registration of ${n} failed: ${(e as Error).message}`);
  };
  await Promise.all(
    nodes.map((n) =>
      register(client, n).then(
        (r) => {
          accepted.push(r.acceptedMs);
          registered.accepted(n, r.registrationMs);
        },
        (e: unknown) => failure(n, e),
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

/** CPU seconds (user + system) a process has used so far. */
function cpuSeconds(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  // utime and stime, fields 14 and 15 of /proc/<pid>/stat, in clock ticks (100 per second on Linux).
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

const newStats = (): LivenessStats => ({
  watchTaken: new Map(),
  beats: [],
  beatFailures: 0,
  watchesLost: 0,
  reregistered: 0,
  reregisterFailures: 0,
});

/** Jobs of a dark zone asking for the zone tallies at once (nodeStanding), as the eviction gate needs them. */
const ASKING_JOBS = 10;

/**
 * What a dark zone's jobs cost the control plane once every node is registered. Baseline (same run): what
 * each nodeStanding did before the shared listing, its own listing of every registry one query at a time.
 */
async function zoneTallies(client: Client, node: string): Promise<void> {
  const [recs, oneMs] = await timed(() => registeredNodes(client, 1));
  const [, lanesMs] = await timed(() => registeredNodes(client));
  const [, unsharedMs] = await timed(() =>
    Promise.all(Array.from({ length: ASKING_JOBS }, () => registeredNodes(client, 1))),
  );
  const standing = createStandingActivities(client);
  const [answers, sharedMs] = await timed(() =>
    Promise.all(Array.from({ length: ASKING_JOBS }, () => standing.nodeStanding({ node }))),
  );
  const listed = countedNodes(recs);
  table(`zone tallies over ${recs.length} registries (baseline: one query at a time, as each ask did before)`, [
    ['', 'wall', 'vs baseline'],
    ['one listing, 1 query in flight (baseline)', ms(oneMs), '1.00x'],
    ['one listing, 16 in flight', ms(lanesMs), ratio(lanesMs, oneMs)],
    [`${ASKING_JOBS} jobs asking at once, a listing each (before)`, ms(unsharedMs), ratio(unsharedMs, oneMs)],
    [`${ASKING_JOBS} jobs asking at once through nodeStanding (shared)`, ms(sharedMs), ratio(sharedMs, oneMs)],
  ]);
  const before = JSON.stringify(listed).length;
  const after = JSON.stringify(tallyZones(listed)).length;
  console.log(
    `\nan eviction ask's node data: ${before} bytes as a node list (before), ${after} bytes as zone tallies (${ratio(after, before)}); tallies agree with the shared answer: ${JSON.stringify(answers[0].zones) === JSON.stringify(tallyZones(listed))}`,
  );
}

async function main(): Promise<void> {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'kybernate-bench-'));
  const state = await up({ home, ownerPid: process.pid, log: () => undefined });
  const stop = new AbortController();
  const loops: Promise<void>[] = [];
  const conns: Connection[] = [];
  try {
    const worker = await startControlWorker(
      state,
      opts.cachedWorkflows ? { KYBERNATE_CONTROL_CACHED_WORKFLOWS: String(opts.cachedWorkflows) } : {},
    );
    const config = configFromStack(state);
    const k = await KybernateClient.connect(config);
    // The agents' long polls and heartbeats over a few connections (100 agents each), as separate agents would.
    for (let i = 0; i < Math.ceil((opts.agents + opts.baseline + 1) / 100); i++)
      conns.push(await Connection.connect(temporalConnectionOptions(config)));
    const clients = conns.map((c) => new Client({ connection: c, namespace: config.namespace }));
    const agentClient = (i: number): Client => clients[i % clients.length];
    const temporalPid = state.processes.find((p) => p.component === 'temporal')?.pid;
    try {
      // Baseline: one agent at a time on an idle control plane (the first one warms the worker up, unmeasured).
      const baseStats = newStats();
      const t00 = performance.now();
      const registered = new Registered();
      loops.push(livenessLoop(agentClient(0), 'warmup', t00, stop.signal, newStats(), registered.of('warmup')));
      await storm(k.client, ['warmup'], registered);
      const base: number[] = [];
      const baseReady: number[] = [];
      const baseWatch: number[] = [];
      for (let i = 0; i < opts.baseline; i++) {
        const n = `base-${i}`;
        const t0 = performance.now();
        loops.push(livenessLoop(agentClient(i + 1), n, t0, stop.signal, baseStats, registered.of(n)));
        const r = await storm(k.client, [n], registered);
        base.push(...r.accepted);
        baseReady.push(...r.ready);
        while (!baseStats.watchTaken.has(n) && performance.now() - t0 < 30_000) await sleep(10);
        const w = baseStats.watchTaken.get(n);
        if (w !== undefined) baseWatch.push(w);
      }
      const rssIdle = rssBytes(worker.pid);

      const nodes = Array.from({ length: opts.agents }, (_, i) => `storm-${String(i).padStart(4, '0')}`);
      const stats = newStats();
      const t0 = performance.now();
      nodes.forEach((n, i) => loops.push(livenessLoop(agentClient(i), n, t0, stop.signal, stats, registered.of(n))));
      const s = await storm(k.client, nodes, registered);
      const rssStorm = rssBytes(worker.pid);
      // Every node's first watch taken by its agent (or 5 minutes).
      while (stats.watchTaken.size < nodes.length && performance.now() - t0 < s.allReadyMs + 300_000) await sleep(200);
      const watchesAllMs = performance.now() - t0;

      // Steady state: the agents heartbeat their watches; only the beats of this window count.
      stats.beats.length = 0;
      const cpu0 = { worker: cpuSeconds(worker.pid), temporal: temporalPid ? cpuSeconds(temporalPid) : NaN };
      await sleep(opts.heartbeatSeconds * 1000);
      const cpu1 = { worker: cpuSeconds(worker.pid), temporal: temporalPid ? cpuSeconds(temporalPid) : NaN };
      const beats = [...stats.beats];
      const rssBeats = rssBytes(worker.pid);
      const census = async (): Promise<{ ready: number; states: Map<string, number> }> => {
        let readyNow = 0;
        const byState = new Map<string, number>();
        for (let i = 0; i < nodes.length; i += 50) {
          const recs = await Promise.all(
            nodes.slice(i, i + 50).map((n) =>
              k.client.workflow
                .getHandle(nodeWorkflowId(n))
                .query<NodeRecord>('status')
                .catch(() => null),
            ),
          );
          for (const r of recs) {
            const st = r?.state ?? 'none';
            byState.set(st, (byState.get(st) ?? 0) + 1);
            if (r?.state === 'Ready' && r.inventory !== null) readyNow++;
          }
        }
        return { ready: readyNow, states: byState };
      };
      const atEnd = await census();
      const stillReady = atEnd.ready;
      const states = atEnd.states;
      // Converged? Nodes a late watch left Unhealthy come back when their agents' watchdogs register again.
      const tEnd = performance.now();
      let last = atEnd;
      while (last.ready < nodes.length && performance.now() - tEnd < 300_000) {
        await sleep(5_000);
        last = await census();
      }
      const convergedAfter = last.ready === nodes.length ? (performance.now() - tEnd) / 1000 : null;

      const b50 = pct(base, 50);
      const r50 = pct(baseReady, 50);
      const w50 = pct(baseWatch, 50);
      const hb50 = pct(baseStats.beats, 50);
      const taken = [...stats.watchTaken.values()];
      console.log(
        `\n${opts.agents} lightweight in-process agents (no worker, no node activities: each signals its registration and inventory, long-polls its node queue for the liveness watch and heartbeats it every 5 s through the client), one real control worker, local dev server; ${os.cpus().length} cores`,
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
          'baseline: watch taken by its agent',
          ms(w50),
          ms(pct(baseWatch, 99)),
          ms(Math.max(...baseWatch)),
          '1.00x',
          ratio(pct(baseWatch, 99), w50),
        ],
        [
          'baseline: watch heartbeat',
          ms(hb50),
          ms(pct(baseStats.beats, 99)),
          ms(Math.max(...baseStats.beats)),
          '1.00x',
          ratio(pct(baseStats.beats, 99), hb50),
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
          `storm of ${opts.agents}: watch taken by its agent`,
          ms(pct(taken, 50)),
          ms(pct(taken, 99)),
          ms(Math.max(...taken)),
          ratio(pct(taken, 50), w50),
          ratio(pct(taken, 99), w50),
        ],
        [
          `watch heartbeats (${opts.heartbeatSeconds} s, every 5 s)`,
          ms(pct(beats, 50)),
          ms(pct(beats, 99)),
          ms(Math.max(...beats)),
          ratio(pct(beats, 50), hb50),
          ratio(pct(beats, 99), hb50),
        ],
      ]);
      table('control worker memory (RSS)', [
        ['idle (after baseline)', 'after the storm', `after ${opts.heartbeatSeconds} s of heartbeats`, 'storm vs idle'],
        [mib(rssIdle), mib(rssStorm), mib(rssBeats), ratio(rssStorm, rssIdle)],
      ]);
      const window = opts.heartbeatSeconds;
      table(`CPU during the ${window} s of heartbeats (share of one core)`, [
        ['control worker', 'Temporal dev server'],
        [
          `${((100 * (cpu1.worker - cpu0.worker)) / window).toFixed(0)}%`,
          `${((100 * (cpu1.temporal - cpu0.temporal)) / window).toFixed(0)}%`,
        ],
      ]);
      console.log(
        `\nregistration failures: ${s.failed}; all Ready after ${(s.allReadyMs / 1000).toFixed(1)} s; watches taken ${stats.watchTaken.size}/${nodes.length} after ${(watchesAllMs / 1000).toFixed(1)} s; heartbeats sent ${beats.length} (${(beats.length / window).toFixed(0)}/s), failed ${stats.beatFailures}; watches lost under an agent ${stats.watchesLost}; Ready at the end: ${stillReady}/${nodes.length} (${[...states].map(([st, n]) => `${st} ${n}`).join(', ')}); ${convergedAfter === null ? `still not all Ready 5 min later: ${last.ready}/${nodes.length} (${[...last.states].map(([st, n]) => `${st} ${n}`).join(', ')})` : `all Ready again ${convergedAfter.toFixed(0)} s later`}; registered again by their watchdog in all ${stats.reregistered} (failed ${stats.reregisterFailures})`,
      );
      await zoneTallies(k.client, nodes[0]);
    } finally {
      stop.abort();
      await k.close();
    }
  } finally {
    stop.abort();
    await Promise.allSettled(loops);
    for (const c of conns) await c.close().catch(() => undefined);
    await down({ home, log: () => undefined });
    fs.rmSync(home, { recursive: true, force: true });
  }
}

main().catch((e: unknown) => {
  console.error(`bench failed: ${(e as Error).stack}`);
  process.exit(1);
});
