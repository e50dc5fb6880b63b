import { placementWithStart } from './placement-start';
import { ApplicationFailure } from '@temporalio/activity';
import { type Client, WorkflowNotFoundError } from '@temporalio/client';
import type { CheckpointStatus } from '../../common/checkpoint';
import type { S3Config } from '../../common/config';
import { ErrorType } from '../../common/errors';
import { readS3Checkpoint } from '../catalogue';
import { checkpointWorkflowId, CONTROL_QUEUE, promotionWorkflowId } from '../../common/queues';
import { type CompatRecord, incompatibilities, type NodeCompat, usableGpus } from '../../common/compat';
import type { Candidate, CheckpointInfo, PlacementSurvey, Reservation } from '../../common/restore';
import type { NodeInventory } from '../node/inventory';
import type { AlertRecord } from '../../common/alert';
import type { NodeRecord } from '../../common/node';
import { createAdmissionActivities } from './admission';
import { createIncidentActivities } from './incident';
import { registeredNodes } from './registry';
import { createHealthActivities } from './health';
import { createRetentionActivities } from './retention';
import { createChunkGcActivities } from './chunk-gc';
import { createSweepActivities } from './sweep';
import { createStandingActivities } from './standing';
import { createJobOpenActivities } from './job-open';
import { PLACEMENT_WORKFLOW_ID, releaseSignal, reserveUpdate } from '../../workflows/placement';

/** A node whose registry is from before liveness (no state) is not offered once it has not reported for this long. */
export const NODE_STALE_MS = 2 * 60 * 1000;

/** Whether a node may take placements: Ready (its agent heartbeats), or a report-only registry's recent report. */
export function placeable(rec: NodeRecord, nowMs: number): boolean {
  if (!rec.inventory || !rec.lastSeen) return false;
  if (rec.state !== undefined) return rec.state === 'Ready';
  return nowMs - Date.parse(rec.lastSeen) <= NODE_STALE_MS;
}

/**
 * Activities that run on the control queue: anything that needs a Temporal client. With s3, look-ups of a
 * checkpoint whose workflow history is gone (retention) fall back to its metadata.json in S3.
 */
export function createControlActivities(client: Client, s3?: S3Config) {
  /** Ready nodes, with their inventory. */
  async function healthyNodes(): Promise<{ node: string; inv: NodeInventory }[]> {
    const out: { node: string; inv: NodeInventory }[] = [];
    for (const rec of await registeredNodes(client)) {
      if (!rec.inventory || !placeable(rec, Date.now())) continue;
      out.push({ node: rec.node, inv: rec.inventory });
    }
    return out;
  }
  return {
    ...createIncidentActivities(),
    ...createAdmissionActivities(client),
    ...createRetentionActivities(s3),
    ...createChunkGcActivities(s3),
    ...createSweepActivities(client),
    ...createHealthActivities(client),
    ...createStandingActivities(client),
    ...createJobOpenActivities(client),
    /** Adds a checkpoint to its node's promotion loop, starting the loop if none runs. */
    async enqueuePromotion(input: {
      node: string;
      checkpointId: string;
      metadataSha256?: string | null;
    }): Promise<void> {
      await client.workflow.signalWithStart('promotion', {
        workflowId: promotionWorkflowId(input.node),
        taskQueue: CONTROL_QUEUE,
        args: [{ node: input.node }],
        signal: 'enqueue',
        staticSummary: `Promotion loop of node ${input.node}: uploads checkpoints left on its disk once S3 takes them`,
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
            throw ApplicationFailure.retryable(
              `S3 look-up of checkpoint '${input.checkpointId}': ${(err as Error).message}`,
              ErrorType.S3Unavailable,
            );
          }
        }
        if (!found)
          throw ApplicationFailure.nonRetryable(
            `no checkpoint '${input.checkpointId}' (no workflow, no metadata.json in S3)`,
            'CheckpointNotFound',
          );
        const md = found.metadata;
        // The declared VRAM (--vram) overrides; without it, what was measured at checkpoint.
        return {
          checkpointId: input.checkpointId,
          jobId: md.jobId,
          node: md.node,
          tier: 's3',
          vramBytes: md.cuda.vramBytes || (md.cuda.measuredVramBytes ?? 0),
          metadataSha256: null,
          source: 's3',
          ...(md.compat ? { compat: md.compat } : {}),
        };
      }
      if (s.phase !== 'Durable' && s.phase !== 'PendingUpload') {
        throw ApplicationFailure.nonRetryable(
          `checkpoint '${input.checkpointId}' is ${s.phase}, not restorable`,
          'CheckpointNotFound',
        );
      }
      return {
        checkpointId: s.checkpointId,
        jobId: s.jobId,
        node: s.node,
        tier: s.tier,
        vramBytes: s.vramBytes || (s.measuredVramBytes ?? 0),
        metadataSha256: s.metadataSha256 ?? null,
        source: 'workflow',
        ...(s.compat ? { compat: s.compat } : {}),
      };
    },

    /**
     * Ready nodes with ONE GPU that has the VRAM (never the sum across GPUs), preferred ones
     * first, then by free VRAM. With compat (the checkpoint's record), nodes that cannot restore it are left out
     * and each candidate lists only the GPUs the restore may use.
     */
    async placementCandidates(input: {
      bytes: number;
      exclude: string[];
      prefer: string[];
      only?: string;
      compat?: CompatRecord;
    }): Promise<Candidate[]> {
      const out: Candidate[] = [];
      for (const { node, inv } of await healthyNodes()) {
        if (input.exclude.includes(node) || (input.only && node !== input.only)) continue;
        const c = candidateOf(node, inv, input.bytes, input.compat);
        if (c) out.push(c);
      }
      const rank = (n: string): number => (input.prefer.includes(n) ? input.prefer.indexOf(n) : input.prefer.length);
      return out.sort(
        (a, b) => rank(a.node) - rank(b.node) || b.freeVramBytes - a.freeVramBytes || a.node.localeCompare(b.node),
      );
    },

    /**
     * The compatibility gate, before any bytes move: every healthy node and why it cannot restore a checkpoint
     * recorded as `compat` (null: it can), and the largest single GPU anywhere (a workload needing more is a
     * multi-GPU job, out of scope).
     */
    async placementSurvey(input: { compat?: CompatRecord }): Promise<PlacementSurvey> {
      return surveyNodes(await healthyNodes(), input.compat);
    },

    async reserve(input: {
      reservationId: string;
      bytes: number;
      candidates: Candidate[];
    }): Promise<Reservation | null> {
      return client.workflow.executeUpdateWithStart(reserveUpdate, {
        args: [input],
        startWorkflowOperation: placementWithStart(),
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
      await client.workflow.start('alert', {
        workflowId,
        taskQueue: CONTROL_QUEUE,
        args: [record],
        staticSummary: `Alert ${record.kind}: checkpoint ${record.checkpointId} on node ${record.node}`,
        staticDetails: record.message,
      });
      return workflowId;
    },
  };
}

function compatOf(node: string, inv: NodeInventory): NodeCompat {
  return {
    node,
    vramSource: inv.vramSource,
    gpus: inv.gpus ?? [],
    driverVersion: inv.driverVersion ?? null,
    cudaVersion: inv.cudaVersion ?? null,
    criuVersion: inv.criuVersion,
    kernelRelease: inv.kernelRelease ?? null,
    ...(inv.cpuFlags ? { cpuFlags: inv.cpuFlags } : {}),
  };
}

/** The compatibility gate over reported inventories (pure: the workflow tests use it over fixtures). */
export function surveyNodes(healthy: { node: string; inv: NodeInventory }[], compat?: CompatRecord): PlacementSurvey {
  const nodes: PlacementSurvey['nodes'] = [];
  let largestGpuBytes = 0;
  for (const { node, inv } of [...healthy].sort((a, b) => a.node.localeCompare(b.node))) {
    for (const g of inv.gpus ?? []) largestGpuBytes = Math.max(largestGpuBytes, g.totalVramBytes);
    if (!inv.gpus?.length) largestGpuBytes = Math.max(largestGpuBytes, inv.totalVramBytes);
    const c = compatOf(node, inv);
    const why = compat ? incompatibilities(compat, c) : [];
    if (compat && why.length === 0 && inv.gpus?.length && usableGpus(compat, c).indexes.length === 0) {
      why.push(usableGpus(compat, c).note ?? "no GPU of the checkpoint's model");
    }
    nodes.push({ node, reason: why.length > 0 ? why.join('; ') : null });
  }
  return { nodes, largestGpuBytes };
}

const zoneOf = (inv: NodeInventory): { zone?: string } => (inv.zone ? { zone: inv.zone } : {});

/** A node as a placement candidate for `bytes` of VRAM on one GPU, or null when it cannot take it. */
export function candidateOf(node: string, inv: NodeInventory, bytes: number, compat?: CompatRecord): Candidate | null {
  let gpus = (inv.gpus ?? []).map((g) => ({ index: g.index, freeVramBytes: g.freeVramBytes }));
  let note: string | null = null;
  if (compat) {
    const c = compatOf(node, inv);
    if (incompatibilities(compat, c).length > 0) return null;
    const usable = usableGpus(compat, c);
    note = usable.note;
    gpus = gpus.filter((g) => usable.indexes.includes(g.index));
    if (inv.gpus?.length && gpus.length === 0) return null;
  }
  if (gpus.length === 0) {
    // No GPU at all: only a workload without VRAM fits (a report from before per-GPU inventory: its figure).
    const free = inv.gpus?.length ? 0 : inv.freeVramBytes;
    return free >= bytes ? { node, freeVramBytes: free, vramSource: inv.vramSource, ...zoneOf(inv) } : null;
  }
  const largest = Math.max(...gpus.map((g) => g.freeVramBytes));
  if (largest < bytes) return null;
  return { node, freeVramBytes: largest, vramSource: inv.vramSource, gpus, ...(note ? { note } : {}), ...zoneOf(inv) };
}

export type ControlActivities = ReturnType<typeof createControlActivities>;
