import { Client, Connection } from '@temporalio/client';
import { NativeConnection, Worker } from '@temporalio/worker';
import { createControlActivities } from '../activities/control';
import type { S3Config } from '../common/config';
import { CONTROL_QUEUE } from '../common/queues';
import { joinLocalStack } from '../deploy/local/join';
import { loadConfig, makeLogger } from './config';

/** The control-plane worker: every workflow, plus activities that need a Temporal client. */
export async function createControlWorker(address: string, namespace: string, s3?: S3Config): Promise<{ worker: Worker; close: () => Promise<void> }> {
  const connection = await NativeConnection.connect({ address });
  const clientConn = await Connection.connect({ address });
  const client = new Client({ connection: clientConn, namespace });
  const worker = await Worker.create({
    connection,
    namespace,
    taskQueue: CONTROL_QUEUE,
    workflowsPath: require.resolve('../workflows'),
    activities: createControlActivities(client, s3),
  });
  return { worker, close: async () => { await clientConn.close(); await connection.close(); } };
}

export async function runControlWorker(): Promise<void> {
  const cfg = loadConfig();
  const logger = makeLogger({ component: 'control-worker' });
  const { worker, close } = await createControlWorker(cfg.temporalAddress, cfg.namespace, cfg.s3);
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => worker.shutdown());
  const leaveStack = joinLocalStack('control-worker', cfg.temporalAddress);
  logger.info({ queue: CONTROL_QUEUE }, 'control worker ready');
  try {
    await worker.run();
  } finally {
    leaveStack();
    await close();
  }
}
