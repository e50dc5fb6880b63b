import * as fs from 'node:fs';
import { loadClientConfigProfile, toClientOptions, type ClientConfigProfile } from '@temporalio/envconfig';
import pino, { type Logger } from 'pino';
import { z } from 'zod';
import type { KybernateConfig, S3Config } from '../common/config';

/**
 * What a process falls back to for settings the environment leaves unset: the local stack's state file, which
 * the CLI reads (deploy/local) and hands in. Production passes nothing and configures everything explicitly.
 */
export interface ConfigDefaults {
  temporalAddress?: string;
  namespace?: string;
  uiUrl?: string | null;
  s3?: Partial<S3Config>;
}

/** A setting is missing or malformed: every problem, each line naming its variable, and never a secret's value. */
export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    // One line (the CLI escapes line breaks in what it prints): problems separated by '; '.
    super(`invalid configuration: ${problems.join('; ')}`);
    this.name = 'ConfigError';
  }
}

const HOST_PORT = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):\d{1,5}$/;
const BOOL = z.enum(['true', 'false', '1', '0']).transform((v) => v === 'true' || v === '1');
const optional = <T extends z.ZodType>(t: T) => z.preprocess((v) => (v === '' ? undefined : v), t.optional());
/** A duration in whole milliseconds, 100 ms to 10 min (liveness timers). */
const MILLIS = z
  .string()
  .regex(/^\d+$/, 'must be a whole number of milliseconds')
  .transform(Number)
  .pipe(z.number().min(100, 'must be at least 100 ms').max(600_000, 'must be at most 600000 ms (10 min)'));
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/** Every KYBERNATE_* variable the workers and the CLI read; empty counts as unset. */
const EnvSchema = z.object({
  KYBERNATE_TEMPORAL_ADDRESS: optional(z.string().regex(HOST_PORT, 'must be host:port')),
  KYBERNATE_NAMESPACE: optional(z.string().min(1)),
  KYBERNATE_UI_URL: optional(z.url({ protocol: /^https?$/, error: 'must be an http(s) URL' })),
  KYBERNATE_S3_ENDPOINT: optional(z.url({ protocol: /^https?$/, error: 'must be an http(s) URL' })),
  KYBERNATE_S3_BUCKET: optional(
    z.string().regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/, 'must be an S3 bucket name (3-63 of a-z 0-9 . -)'),
  ),
  KYBERNATE_S3_REGION: optional(z.string().regex(/^[a-z0-9-]+$/, 'must be a region name like us-east-1')),
  KYBERNATE_S3_FORCE_PATH_STYLE: optional(BOOL),
  KYBERNATE_S3_CHUNKS: optional(BOOL),
  KYBERNATE_S3_ACCESS_KEY_ID: optional(z.string()),
  KYBERNATE_S3_SECRET_ACCESS_KEY: optional(z.string()),
  KYBERNATE_LOG_LEVEL: optional(z.enum(LOG_LEVELS)),
  KYBERNATE_HEARTBEAT_MS: optional(MILLIS),
  KYBERNATE_NODE_TIMEOUT_MS: optional(MILLIS),
  KYBERNATE_CONTROL_CACHED_WORKFLOWS: optional(
    z
      .string()
      .regex(/^\d+$/, 'must be a whole number of workflows')
      .transform(Number)
      .pipe(z.number().min(2, 'must be at least 2 (the SDK needs 2 to run workflow tasks)')),
  ),
  AWS_REGION: optional(z.string()),
});

/** TEMPORAL_TLS_*_PATH files are read at start, so a typo stops the process here rather than at its first connect. */
const TLS_PATH_VARS = [
  'TEMPORAL_TLS_CLIENT_CERT_PATH',
  'TEMPORAL_TLS_CLIENT_KEY_PATH',
  'TEMPORAL_TLS_SERVER_CA_CERT_PATH',
] as const;

/**
 * The configuration, validated before anything connects. Temporal comes from the SDK's environment
 * configuration (@temporalio/envconfig: a TOML profile from TEMPORAL_CONFIG_FILE or ~/.config/temporalio/temporal.toml,
 * TEMPORAL_PROFILE, and the TEMPORAL_ADDRESS / TEMPORAL_NAMESPACE / TEMPORAL_TLS_* / TEMPORAL_API_KEY overrides);
 * KYBERNATE_TEMPORAL_ADDRESS and KYBERNATE_NAMESPACE still win over it. S3 comes from KYBERNATE_S3_*. What none
 * of them sets comes from `defaults` (the local stack), else a default or an error naming the variable.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, defaults: ConfigDefaults = {}): KybernateConfig {
  const problems: string[] = [];
  const parsed = EnvSchema.safeParse(env);
  if (!parsed.success) {
    for (const issue of parsed.error.issues) problems.push(`${issue.path.join('.')}: ${issue.message}`);
    throw new ConfigError(problems);
  }
  const e = parsed.data;

  for (const v of TLS_PATH_VARS) {
    const p = env[v];
    if (p) {
      try {
        fs.accessSync(p, fs.constants.R_OK);
      } catch (err) {
        problems.push(`${v}: cannot read ${p} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
      }
    }
  }
  let profile: ClientConfigProfile = {};
  // Unread (a TLS file or the profile failed): the address may be in it, so its absence is no separate problem.
  let profileRead = false;
  if (problems.length === 0) {
    try {
      profile = loadClientConfigProfile({ overrideEnvVars: stringEnv(env) });
      profileRead = true;
    } catch (err) {
      // The SDK's messages name the profile or the TOML key; they never quote a key's value.
      problems.push(`TEMPORAL_CONFIG_FILE/TEMPORAL_PROFILE: ${(err as Error).message}`);
    }
  }
  if (profile.tls?.clientCert && !profile.tls.clientKey)
    problems.push('TEMPORAL_TLS_CLIENT_KEY_PATH: required with a client certificate');
  if (profile.tls?.clientKey && !profile.tls.clientCert)
    problems.push('TEMPORAL_TLS_CLIENT_CERT_PATH: required with a client key');

  const temporalAddress = e.KYBERNATE_TEMPORAL_ADDRESS ?? profile.address ?? defaults.temporalAddress;
  if (!temporalAddress && profileRead)
    problems.push(
      "TEMPORAL_ADDRESS: required (or KYBERNATE_TEMPORAL_ADDRESS, a profile in TEMPORAL_CONFIG_FILE, or a local stack: 'kybernate up')",
    );
  else if (temporalAddress && !HOST_PORT.test(temporalAddress))
    problems.push(`TEMPORAL_ADDRESS: must be host:port, got '${temporalAddress}'`);

  const bucket = e.KYBERNATE_S3_BUCKET ?? defaults.s3?.bucket;
  if (!bucket) problems.push("KYBERNATE_S3_BUCKET: required (or a local stack: 'kybernate up')");
  const accessKeyId = e.KYBERNATE_S3_ACCESS_KEY_ID ?? defaults.s3?.accessKeyId;
  const secretAccessKey = e.KYBERNATE_S3_SECRET_ACCESS_KEY ?? defaults.s3?.secretAccessKey;
  if (accessKeyId && !secretAccessKey)
    problems.push('KYBERNATE_S3_SECRET_ACCESS_KEY: required with KYBERNATE_S3_ACCESS_KEY_ID');
  if (secretAccessKey && !accessKeyId)
    problems.push('KYBERNATE_S3_ACCESS_KEY_ID: required with KYBERNATE_S3_SECRET_ACCESS_KEY');
  const heartbeatMs = e.KYBERNATE_HEARTBEAT_MS;
  const nodeTimeoutMs = e.KYBERNATE_NODE_TIMEOUT_MS;
  if (heartbeatMs !== undefined && nodeTimeoutMs !== undefined && nodeTimeoutMs < 2 * heartbeatMs)
    problems.push(
      `KYBERNATE_NODE_TIMEOUT_MS: must be at least twice KYBERNATE_HEARTBEAT_MS (${heartbeatMs}), or one late heartbeat makes the node Unhealthy`,
    );
  if (problems.length > 0 || !temporalAddress || !bucket) throw new ConfigError(problems);

  const connect = toClientOptions(profile).connectionOptions;
  const endpoint = e.KYBERNATE_S3_ENDPOINT ?? defaults.s3?.endpoint;
  const tls = connect.tls ?? undefined;
  return {
    temporalAddress,
    namespace: e.KYBERNATE_NAMESPACE ?? profile.namespace ?? defaults.namespace ?? 'default',
    temporal: {
      ...(tls !== undefined ? { tls } : {}),
      ...(connect.apiKey !== undefined && typeof connect.apiKey === 'string' ? { apiKey: connect.apiKey } : {}),
      ...(profile.grpcMeta ? { metadata: profile.grpcMeta } : {}),
    },
    uiUrl: e.KYBERNATE_UI_URL ?? defaults.uiUrl ?? null,
    s3: {
      ...(endpoint ? { endpoint } : {}),
      region: e.KYBERNATE_S3_REGION ?? defaults.s3?.region ?? e.AWS_REGION ?? 'us-east-1',
      bucket,
      // Path style for an S3-compatible store at its own endpoint; virtual-hosted for AWS itself.
      forcePathStyle: e.KYBERNATE_S3_FORCE_PATH_STYLE ?? defaults.s3?.forcePathStyle ?? endpoint !== undefined,
      ...(e.KYBERNATE_S3_CHUNKS !== undefined ? { chunks: e.KYBERNATE_S3_CHUNKS } : {}),
      ...(accessKeyId && secretAccessKey ? { accessKeyId, secretAccessKey } : {}),
    },
    ...(e.KYBERNATE_CONTROL_CACHED_WORKFLOWS !== undefined
      ? { controlCachedWorkflows: e.KYBERNATE_CONTROL_CACHED_WORKFLOWS }
      : {}),
    ...(heartbeatMs !== undefined || nodeTimeoutMs !== undefined
      ? {
          liveness: {
            ...(heartbeatMs !== undefined ? { heartbeatMs } : {}),
            ...(nodeTimeoutMs !== undefined ? { nodeTimeoutMs } : {}),
          },
        }
      : {}),
  };
}

function stringEnv(env: NodeJS.ProcessEnv): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined && v !== '') out[k] = v;
  return out;
}

/** What a start log may say about the configuration: where things are and how we authenticate, never a secret. */
export function describeConfig(cfg: KybernateConfig): Record<string, unknown> {
  const tls = cfg.temporal?.tls;
  return {
    temporal: cfg.temporalAddress,
    namespace: cfg.namespace,
    temporalTls: tls === undefined || tls === false ? 'off' : tls === true || !tls.clientCertPair ? 'on' : 'mutual',
    temporalApiKey: cfg.temporal?.apiKey ? 'set' : 'unset',
    s3: cfg.s3.endpoint ?? `aws:${cfg.s3.region}`,
    bucket: cfg.s3.bucket,
    s3Credentials: cfg.s3.accessKeyId ? 'static' : 'default chain',
    controlCachedWorkflows: cfg.controlCachedWorkflows ?? 'SDK default',
  };
}

export function makeLogger(bindings: Record<string, unknown>): Logger {
  const level = process.env.KYBERNATE_LOG_LEVEL || 'info';
  return pino({ level, base: { pid: process.pid, ...bindings } });
}

/**
 * What the process that starts a worker or an agent may add (the CLI adds the local stack, when this is a
 * checkout with one): defaults for unset settings, and a hook that registers the process with that stack
 * and returns what undoes it.
 */
export interface StartHooks {
  defaults?: ConfigDefaults;
  /** Agent binaries and data root when KYBERNATE_CRIU / KYBERNATE_INIT / KYBERNATE_SHIM / KYBERNATE_DATA_DIR are unset. */
  node?: { criuBin?: string; initBin?: string; shimBin?: string; dataRoot?: string };
  join?: (
    component: string,
    temporalAddress: string,
    opts?: { dataDir?: string; metricsAddress?: string | null },
  ) => () => void;
  /**
   * Where a worker of the local stack serves metrics when KYBERNATE_METRICS_ADDRESS is unset: a free loopback
   * port (one machine runs several agents), or null for a worker that does not belong to it.
   */
  localMetricsAddress?: (temporalAddress: string) => (() => Promise<string>) | null;
}
