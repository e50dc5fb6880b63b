import { HeadObjectCommand } from '@aws-sdk/client-s3';
import type { Client } from '@temporalio/client';
import { makeS3Client } from '../activities/s3-client';
import { s3Prefix } from '../activities/node/context';
import type { CheckpointPhase, CheckpointStatus, Tier } from '../common/checkpoint';
import type { S3Config } from '../common/config';
import { METADATA_FILE } from '../common/metadata';
import { checkpointWorkflowId } from '../common/queues';
import { SA_JOB, SA_NODE, SA_PHASE, SA_TIER } from '../common/search-attributes';
import { describeFailureChain } from './errors';
import { finalStatus } from './outcome';

/** How long a look-up in Temporal's record or S3 may take before it counts as "not answering". */
export const RECORD_TIMEOUT_MS = 5000;

/**
 * A checkpoint as Temporal's record and S3 hold it, for when its workflow cannot be asked (the control
 * worker is down): the full final status of a finished workflow (its result, read from history), else the
 * phase, tier, job and node from its search attributes, plus whether S3 holds its metadata.json.
 */
export interface CheckpointRecord extends CheckpointStatus {
  answeredBy: 'temporal-record';
  workflowStatus: string;
  note: string;
  /** 'present' | 'absent' | 'unreachable: <why>' */
  s3MetadataJson: string;
}

export async function checkpointFromRecord(
  client: Client,
  s3: S3Config,
  checkpointId: string,
  why: string,
): Promise<CheckpointRecord> {
  const h = client.workflow.getHandle(checkpointWorkflowId(checkpointId));
  const within = <T>(fn: () => Promise<T>): Promise<T> => client.withDeadline(Date.now() + RECORD_TIMEOUT_MS, fn);
  const d = await within(() => h.describe());
  const sa = d.typedSearchAttributes;
  let status: CheckpointStatus = {
    checkpointId,
    jobId: sa.get(SA_JOB) ?? '',
    node: sa.get(SA_NODE) ?? '',
    pid: null,
    vramBytes: 0,
    phase: (sa.get(SA_PHASE) ?? 'Pending') as CheckpointPhase,
    tier: (sa.get(SA_TIER) ?? null) as Tier | null,
    failureReason: null,
    history: [],
    upload: null,
  };
  let source = 'phase, tier, job and node from its search attributes (history of attempts not available)';
  const final =
    d.status.name === 'COMPLETED' || d.status.name === 'FAILED'
      ? // A finished workflow's result (or, failed, the status its failure carries) lies in its history: reading it needs no worker.
        await within(() => finalStatus('checkpoint', h)).catch((e: unknown) =>
          d.status.name === 'COMPLETED' ? Promise.reject(e) : null,
        )
      : null;
  if (final !== null) {
    status = final;
    source = 'its final status, read from the workflow history';
  } else if (d.status.name !== 'RUNNING') {
    status.failureReason = await within(() => h.result()).then(
      () => null,
      (e: unknown) => describeFailureChain(e),
    );
    // Ended without a result: whatever it was doing did not finish, except that a checkpoint already Durable
    // (S3 acknowledged it) stays so even if the workflow was ended while freeing memory afterwards.
    if (status.phase !== 'Durable') status.phase = 'Failed';
    source = `its outcome (${d.status.name}) from the workflow history; phase and tier from its search attributes`;
  }
  return {
    ...status,
    answeredBy: 'temporal-record',
    workflowStatus: d.status.name,
    note: `${why}; this is what Temporal and S3 hold: ${source}`,
    s3MetadataJson: await metadataInS3(s3, checkpointId),
  };
}

/** Whether S3 holds the checkpoint's metadata.json (written last: its presence means every file is there). */
async function metadataInS3(cfg: S3Config, checkpointId: string): Promise<string> {
  const s3 = makeS3Client(cfg, { requestTimeoutMs: RECORD_TIMEOUT_MS });
  try {
    await s3.send(new HeadObjectCommand({ Bucket: cfg.bucket, Key: `${s3Prefix(checkpointId)}${METADATA_FILE}` }), {
      abortSignal: AbortSignal.timeout(RECORD_TIMEOUT_MS),
    });
    return 'present';
  } catch (e) {
    const err = e as { name?: string; $metadata?: { httpStatusCode?: number }; message?: string };
    if (err.name === 'NotFound' || err.$metadata?.httpStatusCode === 404) return 'absent';
    return `unreachable (${cfg.endpoint}): ${err.message ?? String(e)}`;
  } finally {
    s3.destroy();
  }
}
