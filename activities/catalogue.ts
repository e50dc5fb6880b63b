import { GetObjectCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { createHash } from 'node:crypto';
import type { S3Config } from '../common/config';
import { METADATA_FILE, type Metadata, MetadataSchema } from '../common/metadata';
import { makeS3Client } from './s3-client';

/**
 * The catalogue of checkpoints as S3 holds it: a checkpoint exists there once its metadata.json is committed
 * (uploaded last). This outlives Temporal's history retention, so listings and look-ups fall back to it.
 */
export interface S3Checkpoint {
  metadata: Metadata;
  /** SHA-256 of the metadata.json object as read now (not the one recorded at seal: that lived in the workflow). */
  metadataSha256: string;
  lastModified: Date | null;
}

const PREFIX = 'checkpoints/';

/** metadata.json of a checkpoint in S3; null when there is none (or it does not parse: then it is no checkpoint). */
export async function readS3Checkpoint(
  cfg: S3Config,
  checkpointId: string,
  client?: S3Client,
): Promise<S3Checkpoint | null> {
  const s3 = client ?? makeS3Client(cfg);
  try {
    const r = await s3.send(
      new GetObjectCommand({ Bucket: cfg.bucket, Key: `${PREFIX}${checkpointId}/${METADATA_FILE}` }),
    );
    const raw = Buffer.from(await r.Body!.transformToByteArray());
    let json: unknown;
    try {
      json = JSON.parse(raw.toString('utf8'));
    } catch {
      return null;
    }
    const parsed = MetadataSchema.safeParse(json);
    if (!parsed.success) return null;
    return {
      metadata: parsed.data,
      metadataSha256: createHash('sha256').update(raw).digest('hex'),
      lastModified: r.LastModified ?? null,
    };
  } catch (e) {
    const err = e as { name?: string; $metadata?: { httpStatusCode?: number } };
    if (err.name === 'NoSuchKey' || err.name === 'NotFound' || err.$metadata?.httpStatusCode === 404) return null;
    throw e;
  } finally {
    if (!client) s3.destroy();
  }
}

/** Ids of every checkpoint whose metadata.json is in S3. */
export async function listS3CheckpointIds(cfg: S3Config, client?: S3Client): Promise<string[]> {
  const s3 = client ?? makeS3Client(cfg);
  const ids: string[] = [];
  try {
    let token: string | undefined;
    do {
      const r = await s3.send(
        new ListObjectsV2Command({ Bucket: cfg.bucket, Prefix: PREFIX, ContinuationToken: token }),
      );
      for (const o of r.Contents ?? []) {
        const m = /^checkpoints\/([^/]+)\/metadata\.json$/.exec(o.Key ?? '');
        if (m) ids.push(m[1]);
      }
      token = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (token);
    return ids;
  } finally {
    if (!client) s3.destroy();
  }
}
