import { Client, Connection } from '@temporalio/client';
import { NativeConnection, Worker } from '@temporalio/worker';
import { createControlActivities } from '../activities/control';
import type { Logger } from 'pino';
import { type KybernateConfig, temporalConnectionOptions } from '../common/config';
import { CONTROL_QUEUE } from '../common/queues';
import { describeConfig, loadConfig, makeLogger, type StartHooks } from './config';
import { untilStarted } from './start-retry';
import { installMetrics, metricsAddress } from './metrics';
import { admissionConfigFromEnv, applyAdmissionConfig } from './admission-config';
import { applyChunkGcSchedule, chunkGcScheduleFromEnv } from './chunk-gc-config';

/**
 * The control-plane worker: every workflow, plus activities that need a Temporal client. Started while Temporal is
 * away, it waits for it (each connection and the worker's creation tried until they succeed).
 */
export async function createControlWorker(
  cfg: KybernateConfig,
  logger: Logger,
): Promise<{ worker: Worker; client: Client; close: () => Promise<void> }> {
  const options = temporalConnectionOptions(cfg);
  const { namespace, controlCachedWorkflows: cachedWorkflows } = cfg;
  const connection = await untilStarted(
    'worker connection to Temporal',
    () => NativeConnection.connect(options),
    logger,
  );
  const clientConn = await untilStarted('client connection to Temporal', () => Connection.connect(options), logger);
  const client = new Client({ connection: clientConn, namespace });
  const worker = await untilStarted(
    'control worker creation',
    () =>
      Worker.create({
        connection,
        namespace,
        taskQueue: CONTROL_QUEUE,
        workflowsPath: require.resolve('../workflows'),
        activities: createControlActivities(client, cfg.s3),
        // The worker's memory grows with the workflows it keeps (about 1.3 MiB each, bench/registration.ts): one per
        // node, job and placement. A workflow evicted from the cache is replayed from its history at its next task.
        ...(cachedWorkflows !== undefined ? { maxCachedWorkflows: cachedWorkflows } : {}),
      }),
    logger,
  );
  return {
    worker,
    client,
    close: async () => {
      await clientConn.close();
      await connection.close();
    },
  };
}

export async function runControlWorker(hooks: StartHooks = {}): Promise<void> {
  const cfg = loadConfig(process.env, hooks.defaults);
  const logger = makeLogger({ component: 'control-worker' });
  logger.info(describeConfig(cfg), 'control worker starting');
  // Before any connection: the SDK runtime (and its exporter) is process-wide and installed once.
  const metrics = await metricsAddress('control', hooks.localMetricsAddress?.(cfg.temporalAddress) ?? null);
  if (metrics) installMetrics(metrics);
  // Checked before connecting: a bad setting names its variable and starts nothing.
  const admissionSettings = admissionConfigFromEnv(process.env);
  const chunkGc = chunkGcScheduleFromEnv(process.env);
  const { worker, client, close } = await createControlWorker(cfg, logger);
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => worker.shutdown());
  const leaveStack =
    hooks.join?.('control-worker', cfg.temporalAddress, { metricsAddress: metrics }) ?? (() => undefined);
  logger.info({ queue: CONTROL_QUEUE, metrics: metrics ? `http://${metrics}/metrics` : 'off' }, 'control worker ready');
  if (Object.keys(admissionSettings).length > 0) {
    // Sent once this worker polls (the update needs a worker to run it); until it lands admission keeps what it had.
    void applyAdmissionConfig(client, admissionSettings).then(
      (s) => logger.info({ admission: s.config }, 'admission configured from the environment'),
      (e: unknown) => logger.error({ err: String(e) }, 'admission settings from the environment not applied'),
    );
  }
  // Needs no worker to land (a schedule is Temporal's own); retried beside the worker, never delaying it.
  void applyChunkGcSchedule(client, chunkGc, logger).catch((e: unknown) =>
    logger.error({ err: String(e) }, 'chunk-gc schedule from the environment not applied'),
  );
  try {
    await worker.run();
  } finally {
    leaveStack();
    await close();
  }
}
