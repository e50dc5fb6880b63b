import * as http from 'node:http';
import * as https from 'node:https';
import * as os from 'node:os';
import { type PutObjectCommand, S3Client, type UploadPartCommand } from '@aws-sdk/client-s3';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import type { S3Config } from '../common/config';

const MiB = 1 << 20;

/** What a transfer may use of this machine: its cores and its memory. */
export interface Machine {
  cores: number;
  memoryBytes: number;
}
export const thisMachine = (): Machine => ({ cores: os.availableParallelism(), memoryBytes: os.totalmem() });

/** How a file moves to or from S3: the part size and how many parts (requests) are in flight at once. */
export interface TransferPlan {
  partSize: number;
  concurrency: number;
}

/** Most requests one transfer keeps in flight: past this, loopback and LAN links gain nothing and S3 throttles. */
export const MAX_CONCURRENCY = 16;

/**
 * The part size and the number of parts in flight for a file of `fileSize` bytes on `machine`. The part size is
 * mc's (minio-go's) 16 MiB, grown with the file so that it fits S3's 10,000 parts; it depends on the file size
 * only, so a retry on the same node finds the multipart upload an earlier attempt started (upload.ts resumes
 * only an upload of the same part size). Parts in flight: enough to keep the link busy while one part is read
 * and hashed (two per core, at least 8: 8 measured faster than 4 on 2 cores; also how many small files go at once), and every in-flight part is one
 * buffer in memory, so together they stay under 1/32 of the machine's memory (a 16 GiB node: 512 MiB).
 */
export function transferPlan(fileSize: number, machine: Machine = thisMachine()): TransferPlan {
  if (!Number.isFinite(fileSize) || fileSize < 0) throw new RangeError(`fileSize: ${fileSize} is not a byte count`);
  const partSize = partSizeFor(fileSize);
  const byCores = Math.max(8, 2 * Math.max(1, Math.floor(machine.cores)));
  const byMemory = Math.max(1, Math.floor(machine.memoryBytes / 32 / partSize));
  return { partSize, concurrency: Math.max(1, Math.min(byCores, byMemory, MAX_CONCURRENCY)) };
}

/**
 * The SDK has no HTTP timeouts by default (a blackholed request hangs forever) and retries a lot; outage
 * backoff belongs to Temporal's retry policy, so the SDK gets tight timeouts and a single retry. Without
 * static keys the SDK's default credential chain finds them (AWS_* environment, shared config and
 * AWS_PROFILE, web identity token, container or instance metadata). Connections are kept alive and reused
 * (each new one costs a handshake, and TLS a second), with sockets for every part a transfer keeps in flight
 * plus a few for the small files and metadata. The SDK's own response checksum is off unless S3 requires
 * one: every byte we download is checked against its sealed SHA-256 anyway, and a second hash of the same
 * bytes only slows the download.
 */
export function makeS3Client(cfg: S3Config, opts: { requestTimeoutMs?: number } = {}): S3Client {
  const agent = {
    keepAlive: true,
    keepAliveMsecs: 1000,
    maxSockets: MAX_CONCURRENCY + 4,
    maxFreeSockets: MAX_CONCURRENCY,
  };
  return new S3Client({
    ...(cfg.endpoint ? { endpoint: cfg.endpoint } : {}),
    region: cfg.region,
    forcePathStyle: cfg.forcePathStyle ?? true,
    ...(cfg.accessKeyId && cfg.secretAccessKey
      ? { credentials: { accessKeyId: cfg.accessKeyId, secretAccessKey: cfg.secretAccessKey } }
      : {}),
    maxAttempts: 2,
    responseChecksumValidation: 'WHEN_REQUIRED',
    requestHandler: new NodeHttpHandler({
      connectionTimeout: 3000,
      requestTimeout: opts.requestTimeoutMs ?? 30000,
      httpAgent: new http.Agent(agent),
      httpsAgent: new https.Agent(agent),
    }),
  });
}

/** S3 allows 10,000 parts per upload: grow the part size with the file (an 80 GB image needs >= 8 MiB parts). */
export function partSizeFor(fileSize: number, preferred = 16 * MiB): number {
  const min = Math.ceil(fileSize / 10000);
  return Math.max(preferred, Math.ceil(min / MiB) * MiB);
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

/**
 * Sends a PUT whose body S3 checks against its ChecksumSHA256 with x-amz-content-sha256: UNSIGNED-PAYLOAD. Over
 * plain HTTP the SDK's SigV4 signer otherwise hashes every body itself (0.73 s of CPU per GiB uploaded, a third
 * of the upload's, measured here: a second SHA-256 of bytes whose SHA-256 we already have), and the store then
 * verifies that hash as well as the checksum (MinIO: 0.5 s of CPU per GiB). Nothing is lost: the checksum
 * header is signed, so the body must still hash to it, and S3 refuses one that does not (BadDigest,
 * XAmzContentChecksumMismatch) and records the checksum the HEADs we trust read back. This is what the SDK
 * itself sends over HTTPS with a flexible checksum.
 */
export function unsignedPayloadWithChecksum<C extends PutObjectCommand | UploadPartCommand>(cmd: C): C {
  if (!cmd.input.ChecksumSHA256) throw new Error('an unsigned payload needs a ChecksumSHA256 for S3 to check');
  (cmd as PutObjectCommand).middlewareStack.add(
    (next) => async (args) => {
      const headers = (args.request as { headers?: Record<string, string> }).headers;
      if (headers) headers['x-amz-content-sha256'] = 'UNSIGNED-PAYLOAD';
      return next(args);
    },
    // Build runs before finalizeRequest, where the request is signed.
    { step: 'build', name: 'kybernateUnsignedPayload' },
  );
  return cmd;
}
