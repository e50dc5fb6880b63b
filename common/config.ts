import type { TLSConfig } from '@temporalio/client';

/**
 * Where the object store is. No static keys (accessKeyId/secretAccessKey unset): the AWS SDK's default
 * credential chain (environment, shared config and profiles, web identity, instance metadata).
 */
export interface S3Config {
  /** Unset: the AWS endpoint of the region. */
  endpoint?: string;
  region: string;
  accessKeyId?: string;
  secretAccessKey?: string;
  bucket: string;
  /** Path-style URLs (MinIO and most S3-compatible stores); default true. */
  forcePathStyle?: boolean;
  /**
   * Large checkpoint files as content-addressed chunks (format v2: chunks/<sha256>, deduplicated across
   * checkpoints); default true. false: whole objects under the checkpoint's prefix (format v1), e.g. for a
   * bucket other tools read file by file. Either format restores.
   */
  chunks?: boolean;
}

/** How to reach Temporal beyond its address: TLS (true: system CAs, no client cert) and an API key. */
export interface TemporalSecurity {
  tls?: TLSConfig | boolean;
  apiKey?: string;
  metadata?: Record<string, string>;
}

/** Where the stack's services are; read from the environment, a Temporal profile, or the local stack's state file. */
export interface KybernateConfig {
  temporalAddress: string;
  namespace: string;
  /** TLS and API key for the Temporal connection; absent: plain gRPC (the local stack). */
  temporal?: TemporalSecurity;
  uiUrl: string | null;
  s3: S3Config;
  /** An agent's heartbeat interval and the silence that makes its node Unhealthy (KYBERNATE_HEARTBEAT_MS, KYBERNATE_NODE_TIMEOUT_MS). */
  liveness?: { heartbeatMs?: number; nodeTimeoutMs?: number };
  /**
   * How many workflows the control worker keeps in memory (KYBERNATE_CONTROL_CACHED_WORKFLOWS): its memory's
   * bound. Absent: the SDK's default, from the heap limit (about 2300 with a 4 GiB heap).
   */
  controlCachedWorkflows?: number;
}

/** The options every Temporal connection (client or worker) of this config is made with. */
export function temporalConnectionOptions(
  cfg: Pick<KybernateConfig, 'temporalAddress' | 'temporal'>,
): { address: string } & TemporalSecurity {
  const t = cfg.temporal ?? {};
  return {
    address: cfg.temporalAddress,
    ...(t.tls !== undefined ? { tls: t.tls } : {}),
    ...(t.apiKey !== undefined ? { apiKey: t.apiKey } : {}),
    ...(t.metadata !== undefined ? { metadata: t.metadata } : {}),
  };
}
