import { Client, Connection } from '@temporalio/client';
import { NativeConnection, Worker } from '@temporalio/worker';
import { createControlActivities } from '../activities/control';
import { type S3Config, type TemporalSecurity, temporalConnectionOptions } from '../common/config';
import { CONTROL_QUEUE } from '../common/queues';
import { describeConfig, loadConfig, makeLogger, type StartHooks } from './config';
import { installMetrics, metricsAddress } from './metrics';

/** The control-plane worker: every workflow, plus activities that need a Temporal client. */
export async function createControlWorker(
  address: string,
  namespace: string,
  s3?: S3Config,
  security?: TemporalSecurity,
): Promise<{ worker: Worker; close: () => Promise<void> }> {
  const options = temporalConnectionOptions({ temporalAddress: address, temporal: security });
  const connection = await NativeConnection.connect(options);
  const clientConn = await Connection.connect(options);
  const client = new Client({ connection: clientConn, namespace });
  const worker = await Worker.create({
    connection,
    namespace,
    taskQueue: CONTROL_QUEUE,
    workflowsPath: require.resolve('../workflows'),
    activities: createControlActivities(client, s3),
  });
  return {
    worker,
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
  const { worker, close } = await createControlWorker(cfg.temporalAddress, cfg.namespace, cfg.s3, cfg.temporal);
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => worker.shutdown());
  const leaveStack =
    hooks.join?.('control-worker', cfg.temporalAddress, { metricsAddress: metrics }) ?? (() => undefined);
  logger.info({ queue: CONTROL_QUEUE, metrics: metrics ? `http://${metrics}/metrics` : 'off' }, 'control worker ready');
  try {
    await worker.run();
  } finally {
    leaveStack();
    await close();
  }
}
