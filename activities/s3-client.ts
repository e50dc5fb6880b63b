import { S3Client } from '@aws-sdk/client-s3';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import type { S3Config } from '../common/config';

/**
 * The SDK has no HTTP timeouts by default (a blackholed request hangs forever) and retries a lot; outage
 * backoff belongs to Temporal's retry policy, so the SDK gets tight timeouts and a single retry. Without
 * static keys the SDK's default credential chain finds them (AWS_* environment, shared config and
 * AWS_PROFILE, web identity token, container or instance metadata).
 */
export function makeS3Client(cfg: S3Config, opts: { requestTimeoutMs?: number } = {}): S3Client {
  return new S3Client({
    ...(cfg.endpoint ? { endpoint: cfg.endpoint } : {}),
    region: cfg.region,
    forcePathStyle: cfg.forcePathStyle ?? true,
    ...(cfg.accessKeyId && cfg.secretAccessKey
      ? { credentials: { accessKeyId: cfg.accessKeyId, secretAccessKey: cfg.secretAccessKey } }
      : {}),
    maxAttempts: 2,
    requestHandler: new NodeHttpHandler({
      connectionTimeout: 3000,
      requestTimeout: opts.requestTimeoutMs ?? 30000,
      httpAgent: { keepAlive: true, maxSockets: 32 },
    }),
  });
}

/** S3 allows 10,000 parts per upload: grow the part size with the file (an 80 GB image needs >= 8 MiB parts). */
export function partSizeFor(fileSize: number, preferred = 16 << 20): number {
  const min = Math.ceil(fileSize / 10000);
  const mib = 1 << 20;
  return Math.max(preferred, Math.ceil(min / mib) * mib);
}

/** S3 error codes that no retry can fix: the key, its policy or the bucket is wrong. */
const REJECTED = new Set([
  'AccessDenied',
  'NoSuchBucket',
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'AllAccessDisabled',
  'AccountProblem',
  'InvalidBucketName',
]);
/** S3 refused a body whose checksum differs from the one we sent (ours is the sealed SHA-256). */
const DIGEST = new Set([
  'BadDigest',
  'InvalidDigest',
  'XAmzContentSHA256Mismatch',
  'XAmzContentChecksumMismatch',
  'InvalidChecksum',
]);

/** What kind of S3 failure an SDK error is: refused for good, a checksum refused, or (anything else) try again later. */
export function s3ErrorKind(e: unknown): 'rejected' | 'checksum' | 'unavailable' {
  const err = e as { name?: string; Code?: string; $metadata?: { httpStatusCode?: number } };
  const code = err.Code ?? err.name ?? '';
  if (DIGEST.has(code)) return 'checksum';
  if (REJECTED.has(code) || err.$metadata?.httpStatusCode === 403) return 'rejected';
  return 'unavailable';
}
