import pino, { type Logger } from 'pino';
import type { KybernateConfig } from '../common/config';
import { configFromStack, readStackState } from '../deploy/local/stack';

/**
 * Configuration from the environment (a production cluster and real S3) or, failing that, from the local
 * stack's state file written by `kybernate up`.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): KybernateConfig {
  const local = readStackState(env.KYBERNATE_HOME);
  // Through the proxies `up --toxiproxy` routed S3 (and Temporal) through, so that a fault cut there reaches us.
  const fromStack = local ? configFromStack(local, true) : null;
  const temporalAddress = env.KYBERNATE_TEMPORAL_ADDRESS ?? fromStack?.temporalAddress;
  const endpoint = env.KYBERNATE_S3_ENDPOINT ?? fromStack?.s3.endpoint;
  if (!temporalAddress) throw new Error("KYBERNATE_TEMPORAL_ADDRESS is not set and no local stack is running (start one with 'kybernate up')");
  if (!endpoint) throw new Error("KYBERNATE_S3_ENDPOINT is not set and no local stack is running (start one with 'kybernate up')");
  return {
    temporalAddress,
    namespace: env.KYBERNATE_NAMESPACE ?? fromStack?.namespace ?? 'default',
    uiUrl: env.KYBERNATE_UI_URL ?? fromStack?.uiUrl ?? null,
    s3: {
      endpoint,
      region: env.KYBERNATE_S3_REGION ?? fromStack?.s3.region ?? 'us-east-1',
      accessKeyId: env.KYBERNATE_S3_ACCESS_KEY_ID ?? fromStack?.s3.accessKeyId ?? '',
      secretAccessKey: env.KYBERNATE_S3_SECRET_ACCESS_KEY ?? fromStack?.s3.secretAccessKey ?? '',
      bucket: env.KYBERNATE_S3_BUCKET ?? fromStack?.s3.bucket ?? 'kybernate-checkpoints',
    },
  };
}

export function makeLogger(bindings: Record<string, unknown>): Logger {
  return pino({ level: process.env.KYBERNATE_LOG_LEVEL ?? 'info', base: { pid: process.pid, ...bindings } });
}
