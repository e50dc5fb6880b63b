import { ApplicationFailure } from '@temporalio/activity';
import { type Client, WithStartWorkflowOperation, WorkflowNotFoundError } from '@temporalio/client';
import type { CheckpointStatus } from '../../common/checkpoint';
import type { S3Config } from '../../common/config';
import { ErrorType } from '../../common/errors';
import { readS3Checkpoint } from '../catalogue';
import { checkpointWorkflowId, CONTROL_QUEUE, promotionWorkflowId } from '../../common/queues';
import type { Candidate, CheckpointInfo, Reservation } from '../../common/restore';
import type { AlertRecord } from '../../workflows/alert';
import type { NodeRecord } from '../../workflows/node';
import { createIncidentActivities } from './incident';
import { createRetentionActivities } from './retention';
import { PLACEMENT_WORKFLOW_ID, releaseSignal, reserveUpdate } from '../../workflows/placement';

/** A node that has not reported for this long is not offered for placement. */
export const NODE_STALE_MS = 2 * 60 * 1000;

/**
 * Activities that run on the control queue: anything that needs a Temporal client. With s3, look-ups of a
 * checkpoint whose workflow history is gone (retention) fall back to its metadata.json in S3.
 */
export function createControlActivities(client: Client, s3?: S3Config) {
  return {
    ...createIncidentActivities(),
    ...createRetentionActivities(s3),
    /** Adds a checkpoint to its node's promotion loop, starting the loop if none runs. */
    async enqueuePromotion(input: { node: string; checkpointId: string; metadataSha256?: string | null }): Promise<void> {
      await client.workflow.signalWithStart('promotion', {
        workflowId: promotionWorkflowId(input.node),
        taskQueue: CONTROL_QUEUE,
        args: [{ node: input.node }],
        signal: 'enqueue',
        signalArgs: [{ checkpointId: input.checkpointId, metadataSha256: input.metadataSha256 ?? null }],
      });
    },

    /**
     * A restorable checkpoint: sealed, and Durable on s3 or waiting on the nvme tier of its node. Its workflow
     * knows best; once Temporal has dropped that history, S3's metadata.json (committed last by the upload) is
     * the record, though without the metadata.json SHA-256 recorded at seal, which lived in the workflow.
     */
    async checkpointInfo(input: { checkpointId: string }): Promise<CheckpointInfo> {
      let s: CheckpointStatus;
      try {
        s = await client.workflow.getHandle(checkpointWorkflowId(input.checkpointId)).query<CheckpointStatus>('status');
      } catch (e) {
        if (!(e instanceof WorkflowNotFoundError)) throw e;
        let found: Awaited<ReturnType<typeof readS3Checkpoint>> = null;
        if (s3) {
          try {
            found = await readS3Checkpoint(s3, input.checkpointId);
          } catch (err) {
            throw ApplicationFailure.retryable(`S3 look-up of checkpoint '${input.checkpointId}': ${(err as Error).message}`, ErrorType.S3Unavailable);
          }
        }
        if (!found) throw ApplicationFailure.nonRetryable(`no checkpoint '${input.checkpointId}' (no workflow, no metadata.json in S3)`, 'CheckpointNotFound');
        const md = found.metadata;
        return { checkpointId: input.checkpointId, jobId: md.jobId, node: md.node, tier: 's3', vramBytes: md.cuda.vramBytes, metadataSha256: null, source: 's3' };
      }
      if (s.phase !== 'Durable' && s.phase !== 'PendingUpload') {
        throw ApplicationFailure.nonRetryable(`checkpoint '${input.checkpointId}' is ${s.phase}, not restorable`, 'CheckpointNotFound');
      }
      return { checkpointId: s.checkpointId, jobId: s.jobId, node: s.node, tier: s.tier, vramBytes: s.vramBytes ?? 0, metadataSha256: s.metadataSha256 ?? null, source: 'workflow' };
    },

    /** Healthy nodes (recent report) with the VRAM, preferred ones first, then by free VRAM. */
    async placementCandidates(input: { bytes: number; exclude: string[]; prefer: string[]; only?: string }): Promise<Candidate[]> {
      const out: Candidate[] = [];
      for await (const wf of client.workflow.list({ query: `WorkflowType = 'nodeRegistry' AND ExecutionStatus = 'Running'` })) {
        const rec = await client.workflow.getHandle(wf.workflowId).query<NodeRecord>('status').catch(() => null);
        const inv = rec?.inventory;
        if (!rec || !inv || !rec.lastSeen) continue;
        if (Date.now() - Date.parse(rec.lastSeen) > NODE_STALE_MS) continue;
        if (input.exclude.includes(rec.node) || (input.only && rec.node !== input.only)) continue;
        if (inv.freeVramBytes < input.bytes) continue;
        out.push({ node: rec.node, freeVramBytes: inv.freeVramBytes, vramSource: inv.vramSource });
      }
      const rank = (n: string): number => (input.prefer.includes(n) ? input.prefer.indexOf(n) : input.prefer.length);
      return out.sort((a, b) => rank(a.node) - rank(b.node) || b.freeVramBytes - a.freeVramBytes || a.node.localeCompare(b.node));
    },

    async reserve(input: { reservationId: string; bytes: number; candidates: Candidate[] }): Promise<Reservation | null> {
      return client.workflow.executeUpdateWithStart(reserveUpdate, {
        args: [input],
        startWorkflowOperation: new WithStartWorkflowOperation('placement', {
          workflowId: PLACEMENT_WORKFLOW_ID, taskQueue: CONTROL_QUEUE, args: [{}], workflowIdConflictPolicy: 'USE_EXISTING',
        }),
      });
    },

    /** Idempotent; with no placement workflow running no reservation is held, so there is nothing to release. */
    async release(input: { reservationId: string }): Promise<void> {
      try {
        await client.workflow.getHandle(PLACEMENT_WORKFLOW_ID).signal(releaseSignal, input);
      } catch (e) {
        if (!(e instanceof WorkflowNotFoundError)) throw e;
      }
    },

    async raiseAlert(record: AlertRecord): Promise<string> {
      const workflowId = `alert/${record.kind}/${record.checkpointId}/${Date.now().toString(36)}`;
      await client.workflow.start('alert', { workflowId, taskQueue: CONTROL_QUEUE, args: [record] });
      return workflowId;
    },
  };
}

export type ControlActivities = ReturnType<typeof createControlActivities>;
