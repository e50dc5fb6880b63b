import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection, Worker } from '@temporalio/worker';
import { createNodeActivities } from '../activities/node';
import type { NodeContext } from '../activities/node/context';
import { readInventory } from '../activities/node/inventory';
import { sweepOrphans, temporalOwnerLookup } from '../activities/node/orphans';
import { assertSafeId } from '../common/ids';
import { nodeQueue, nodeWorkflowId } from '../common/queues';
import { temporalConnectionOptions } from '../common/config';
import { ConfigError, describeConfig, loadConfig, makeLogger, type StartHooks } from './config';
import { DEFAULT_HEARTBEAT_MS, DEFAULT_NODE_TIMEOUT_MS } from '../common/node';
import { registryHeartbeat, registryReport } from './registry';
import { createWatchActivities } from '../activities/node/watch';
import { ReportRule, reportingAfter, WatchWatchdog } from './liveness';
import { installMetrics, metricsAddress, nodeGauges } from './metrics';
import { pendingUploadCount } from '../activities/node/pending';
import { untilStarted } from './start-retry';

/** Where an agent's binaries and data are on a production node when neither flags nor KYBERNATE_* say otherwise. */
const NODE_DEFAULTS = {
  criuBin: 'criu',
  initBin: '/usr/bin/tini',
  shimBin: '/usr/local/bin/kybernate-shim',
  dataRoot: '/var/lib/kybernate/nodes',
};

export interface AgentOptions {
  node: string;
  zone?: string;
  dataDir?: string;
  declaredVramBytes?: number;
  criuBin?: string;
  /** The init run as pid 1 of each workload's PID namespace; null: none. Default: $KYBERNATE_INIT ('none' for none), else the provisioned tini (local) or /usr/bin/tini. */
  initBin?: string | null;
  /** The shim each job run is started under. Default: $KYBERNATE_SHIM, else the provisioned one (local) or /usr/local/bin/kybernate-shim. */
  shimBin?: string;
  /** Memory (tmpfs) directory for staging dumps and fetches; null: never stage. Default: /dev/shm/kybernate/<node>. */
  stagingDir?: string | null;
  /** How often the agent reads its inventory; it goes to the registry only when changed or stale (workers/liveness.ts). */
  reportEveryMs?: number;
  /** How often the agent heartbeats its node's liveness watch. Default: $KYBERNATE_HEARTBEAT_MS, else 5 s. */
  heartbeatEveryMs?: number;
  /** Silence after which the registry declares the node Unhealthy. Default: $KYBERNATE_NODE_TIMEOUT_MS, else 15 s. */
  nodeTimeoutMs?: number;
}

/**
 * The node agent: a Temporal worker on node/<name> running only node activities. Workloads it starts are
 * detached, so killing the agent (even with -9) leaves them running.
 */
export async function runAgent(opts: AgentOptions, hooks: StartHooks = {}): Promise<void> {
  assertSafeId('node', opts.node);
  const cfg = loadConfig(process.env, hooks.defaults);
  const bins = { ...NODE_DEFAULTS, ...hooks.node };
  const logger = makeLogger({ node: opts.node, component: 'agent' });
  const dataDir = path.resolve(opts.dataDir ?? process.env.KYBERNATE_DATA_DIR ?? path.join(bins.dataRoot, opts.node));
  fs.mkdirSync(dataDir, { recursive: true });
  const ctx: NodeContext = {
    node: opts.node,
    zone: opts.zone ?? null,
    dataDir,
    criuBin: opts.criuBin ?? process.env.KYBERNATE_CRIU ?? bins.criuBin,
    initBin: initBin(opts.initBin, bins.initBin),
    shimBin: shimBin(opts.shimBin, bins.shimBin),
    criuActionScript: process.env.KYBERNATE_CRIU_ACTION_SCRIPT ?? null,
    declaredVramBytes: opts.declaredVramBytes ?? null,
    stagingDir: opts.stagingDir === undefined ? defaultStagingDir(opts.node) : opts.stagingDir,
    s3: cfg.s3,
    logger,
  };
  logger.info(describeConfig(cfg), 'agent starting');
  // Before any connection: the SDK runtime (and its exporter) is process-wide and installed once.
  const heartbeatMs = opts.heartbeatEveryMs ?? cfg.liveness?.heartbeatMs ?? DEFAULT_HEARTBEAT_MS;
  const nodeTimeoutMs = opts.nodeTimeoutMs ?? cfg.liveness?.nodeTimeoutMs ?? DEFAULT_NODE_TIMEOUT_MS;
  if (nodeTimeoutMs < 2 * heartbeatMs)
    throw new ConfigError([
      `node timeout ${nodeTimeoutMs} ms: must be at least twice the heartbeat interval (${heartbeatMs} ms) (KYBERNATE_NODE_TIMEOUT_MS, KYBERNATE_HEARTBEAT_MS)`,
    ]);
  const metrics = await metricsAddress('agent', hooks.localMetricsAddress?.(cfg.temporalAddress) ?? null);
  if (metrics) installMetrics(metrics, { node: opts.node });
  const gauges = nodeGauges();
  // One id per agent process: the registry counts agent runs by it, and takes a `leave` only from the one that runs.
  const agentRun = `${opts.node}/${process.pid}/${randomUUID().slice(0, 8)}`;
  // Liveness: the registry runs a watch activity on this node's queue, and this agent heartbeats it every
  // heartbeatMs (activity heartbeats: no workflow task, nothing on the control worker). The watchdog below
  // registers again when no watch has run for a while (the registry lost it, declared the node Unhealthy after
  // an outage, or was started anew).
  const watchdog = new WatchWatchdog(nodeTimeoutMs);
  const reports = new ReportRule();
  // Started while Temporal is away (an outage, a node booting first), the agent waits for it: each step below is
  // tried until it succeeds (workers/start-retry.ts), so the node registers as soon as Temporal answers.
  const temporal = temporalConnectionOptions(cfg);
  const connection = await untilStarted(
    'worker connection to Temporal',
    () => NativeConnection.connect(temporal),
    logger,
  );
  const worker = await untilStarted(
    'agent worker creation',
    () =>
      Worker.create({
        connection,
        namespace: cfg.namespace,
        taskQueue: nodeQueue(opts.node),
        activities: {
          ...reportingAfter(createNodeActivities(ctx), () => reports.workDone()),
          ...createWatchActivities({ agentRun, started: () => watchdog.started(), ended: () => watchdog.ended() }),
        },
        maxConcurrentActivityTaskExecutions: 16,
        // The worker sends at most one activity heartbeat per throttle interval (by default 80% of the heartbeat
        // timeout): the watch's heartbeats must really go out every heartbeatMs.
        maxHeartbeatThrottleInterval: heartbeatMs,
        defaultHeartbeatThrottleInterval: heartbeatMs,
      }),
    logger,
  );
  const clientConn = await untilStarted('client connection to Temporal', () => Connection.connect(temporal), logger);
  const client = new Client({ connection: clientConn, namespace: cfg.namespace });
  const beat = { agentRun, timeoutMs: nodeTimeoutMs, heartbeatMs, liveness: 'watch' as const };
  const register = (): Promise<void> => registryHeartbeat(client, opts.node, beat);
  const report = async (): Promise<void> => {
    const mark = reports.mark();
    const inv = await readInventory(ctx);
    gauges.inventory(inv);
    try {
      gauges.pendingUpload(pendingUploadCount(ctx));
    } catch (e) {
      logger.warn({ node: opts.node, err: (e as Error).message }, 'checkpoints pending upload not counted');
    }
    if (!reports.due(inv, Date.now())) {
      gauges.report('unchanged');
      return;
    }
    await registryReport(client, opts.node, nodeTimeoutMs, inv).then(
      () => {
        reports.sent(inv, Date.now(), mark);
        gauges.report('ok');
      },
      (e: unknown) => {
        gauges.report('failed');
        throw e;
      },
    );
  };
  // The registration first: it registers this agent run (the report that follows brings the inventory). A failed
  // first report is tried again by the report timer below (it is due until one is sent).
  // Only the try that was accepted measures the backlog in front of Temporal (workers/liveness.ts), not the waits.
  let sent = Date.now();
  await untilStarted(
    'first registration',
    () => {
      sent = Date.now();
      return register();
    },
    logger,
  );
  watchdog.registered(Date.now(), Date.now() - sent);
  await report().catch((e: Error) => logger.warn({ err: e.message }, 'first inventory report failed'));
  // From now on (the sweep below may take a while): one registration again when no watch ran for a while.
  let registering = false;
  const beats = setInterval(() => {
    if (registering || !watchdog.mustRegister(Date.now())) return;
    registering = true;
    logger.warn({ agentRun }, 'no liveness watch running: registering again');
    const again = Date.now();
    register()
      .then(() => watchdog.registered(Date.now(), Date.now() - again))
      .catch((e: Error) => logger.warn({ err: e.message }, 'registration failed'))
      .finally(() => (registering = false));
  }, heartbeatMs);
  beats.unref(); // the worker keeps the process alive; this timer alone must not, should the start fail below
  // Before the worker takes activities, so no start on this node races the sweep (a job started again under an
  // id whose old workflow closed must not lose its new cgroup). Bounded: each owner lookup gives up after 10 s,
  // and the first that does ends the sweep with nothing removed.
  await sweepOrphans(ctx, temporalOwnerLookup(client)).catch((e: Error) =>
    logger.error({ err: e.message }, 'orphan sweep failed'),
  );
  const timer = setInterval(
    () => report().catch((e: Error) => logger.warn({ err: e.message }, 'inventory report failed')),
    opts.reportEveryMs ?? 30000,
  );
  // A clean stop says so first: the node is Left (no placements) at once, not Unhealthy after the timeout.
  const leave = async (sig: string): Promise<void> => {
    clearInterval(beats);
    clearInterval(timer);
    const said = client.workflow
      .getHandle(nodeWorkflowId(opts.node))
      .signal('leave', { agentRun, why: `agent stopped (${sig})` })
      .then(
        () => logger.info({ signal: sig }, 'left the node registry'),
        (e: Error) => logger.warn({ err: e.message }, 'leave not signalled: the node goes Unhealthy after its timeout'),
      );
    // Bounded: an unreachable Temporal must not keep the agent from stopping.
    await Promise.race([said, new Promise((r) => setTimeout(r, 5000).unref())]);
  };
  for (const sig of ['SIGINT', 'SIGTERM'] as const)
    process.once(sig, () => void leave(sig).finally(() => worker.shutdown()));
  const leaveStack =
    hooks.join?.(`agent:${opts.node}`, cfg.temporalAddress, { dataDir, metricsAddress: metrics }) ?? (() => undefined);
  logger.info(
    {
      queue: nodeQueue(opts.node),
      agentRun,
      heartbeatMs,
      nodeTimeoutMs,
      dataDir,
      stagingDir: ctx.stagingDir,
      declaredVramBytes: ctx.declaredVramBytes,
      metrics: metrics ? `http://${metrics}/metrics` : 'off',
    },
    'agent ready',
  );
  try {
    await worker.run();
  } finally {
    leaveStack();
    clearInterval(timer);
    clearInterval(beats);
    await clientConn.close();
    await connection.close();
  }
}

/**
 * Refuses to start an agent whose init is missing: its workloads could not be stopped with SIGTERM, and the
 * first `run` would fail anyway.
 */
function initBin(given: string | null | undefined, fallback: string): string | null {
  const bin =
    given !== undefined
      ? given
      : process.env.KYBERNATE_INIT === 'none'
        ? null
        : (process.env.KYBERNATE_INIT ?? fallback);
  if (bin === null) return null;
  try {
    fs.accessSync(bin, fs.constants.X_OK);
  } catch {
    throw new Error(
      `init ${bin} is missing or not executable: run deploy/local/provision.sh tini, or set KYBERNATE_INIT to an init (or 'none')`,
    );
  }
  return path.resolve(bin);
}

/** Refuses to start an agent without its run shim, as for the init: every job run would fail to start. */
function shimBin(given: string | undefined, fallback: string): string {
  const bin = given ?? process.env.KYBERNATE_SHIM ?? fallback;
  try {
    fs.accessSync(bin, fs.constants.X_OK);
  } catch {
    throw new Error(
      `run shim ${bin} is missing or not executable: run deploy/local/provision.sh shim, or set KYBERNATE_SHIM`,
    );
  }
  return path.resolve(bin);
}

/** /dev/shm is memory on every Linux we run on; without it, dumps and fetches go straight to disk. */
function defaultStagingDir(node: string): string | null {
  return fs.existsSync('/dev/shm') && fs.statSync('/dev/shm').isDirectory()
    ? path.join('/dev/shm', 'kybernate', node)
    : null;
}
