/** Pure types of the restore and migration workflows. */
import type { Tier } from './checkpoint';
import type { CompatRecord } from './compat';
import type { ProcessIdentity, StepOutcome } from './journal';
import type { Readiness } from './readiness';
import { restoreWorkflowId } from './queues';

export type RestorePhase =
  'Placing' | 'Fetching' | 'RestoringProcess' | 'RestoringVram' | 'Unlocking' | 'Verifying' | 'Running' | 'Failed';

export interface RestoreRequest {
  checkpointId: string;
  /** Restore only on this node. */
  node?: string;
  /** Try these nodes first, then the node holding a local copy, then the rest by free VRAM. */
  prefer?: string[];
  /** Never place on these. */
  exclude?: string[];
  /** VRAM the workload needs; defaults to what its checkpoint recorded. */
  vramBytes?: number;
  /** How long to wait for a node that fits before failing, e.g. '10m'. */
  placementDeadline?: string;
  /** Running only once this probe passes (besides the process running and its CUDA state); see common/readiness. */
  readiness?: Readiness;
}

export interface RestoreAttempt {
  node: string;
  outcome: 'running' | 'failed';
  phase: RestorePhase;
  reason: string | null;
  at: string;
}

export interface RestoreStatus {
  checkpointId: string;
  jobId: string | null;
  phase: RestorePhase;
  node: string | null;
  pid: number | null;
  vramBytes: number;
  source: 's3' | 'nvme' | null;
  attempts: RestoreAttempt[];
  excluded: string[];
  failureReason: string | null;
  /**
   * VRAM reservations that could not be released (the placement workflow unreachable for days): recorded,
   * never a reason to fail a restore that runs. Absent in restores started before this was kept.
   */
  releaseFailures?: string[];
  /** Attempts carried on after the agent was lost mid-restore, from what the node really did. */
  recoveries?: string[];
  /** The compatibility gate's answer: every reporting node and why it cannot restore this checkpoint (null: it can). */
  compatibility?: { node: string; reason: string | null }[];
  /** The GPU of the current node the VRAM is reserved on, and why the choice was narrowed (an old driver). */
  gpu?: { index: number; note: string | null };
  /** The UUID of the GPU the checkpoint's VRAM came from (its node's), for the restore's GPU pair. */
  sourceGpuUuid?: string;
  /**
   * Of a fetch from S3: the bytes read from other checkpoints' chunks the node already held (an earlier checkpoint
   * of the job, a replica's), each checked against its name, instead of fetched. Absent when there were none.
   */
  bytesFromNode?: number;
}

export interface Candidate {
  node: string;
  /** The largest single GPU's free VRAM (never the sum across GPUs). */
  freeVramBytes: number;
  vramSource: 'measured' | 'declared' | 'standin' | 'none';
  /** The GPUs a workload may be placed on, each with its free VRAM; absent from candidates listed before per-GPU placement. */
  gpus?: { index: number; freeVramBytes: number }[];
  /** Why the choice on this node is narrowed (e.g. an old driver: the same GPU index only). */
  note?: string;
  /** The node's zone from its inventory (--zone): the placement workflow throttles zones whose breaker is open. */
  zone?: string;
}

export interface Reservation {
  reservationId: string;
  node: string;
  bytes: number;
  /** The GPU the VRAM is promised on; absent for reservations made before per-GPU placement. */
  gpuIndex?: number;
}

/** Every reporting node and whether (and why not) it can restore a checkpoint: the compatibility gate's answer. */
export interface PlacementSurvey {
  nodes: { node: string; reason: string | null }[];
  /** The largest single GPU's total VRAM on any reporting node (0 when none reports). */
  largestGpuBytes: number;
}

export interface CheckpointInfo {
  checkpointId: string;
  jobId: string;
  node: string;
  tier: Tier | null;
  vramBytes: number;
  /** metadata.json's SHA-256 recorded at seal; null when its workflow history is gone and only S3 knows the checkpoint. */
  metadataSha256?: string | null;
  /** Where this answer came from: the checkpoint workflow, or S3's metadata.json after the history expired. */
  source?: 'workflow' | 's3';
  /** What a restore needs of its node (metadata.json's compat); absent for checkpoints taken before it was recorded. */
  compat?: CompatRecord;
}

/**
 * What a node found out about one restore attempt after the workflow lost sight of its agent: CRIU's outcome
 * from the node's journal, and whether the restored process (by pid and start time) runs.
 */
export interface RestoreInspection {
  criu: StepOutcome['state'];
  /** When the journal recorded a failed CRIU restore: its error type and message. */
  failure: { type: string; message: string } | null;
  /** The restored process, if CRIU got as far as creating it. */
  process: ProcessIdentity | null;
  /** That very process runs (not gone, not a zombie, not another process that took the pid since). */
  running: boolean;
  /** The process's state letter from /proc (R, S, D, T, t, Z...), null when not running. */
  state: string | null;
  /** Its CUDA checkpoint state ('running', 'locked', 'checkpointed', 'failed', 'none' without a CUDA context). */
  cuda: string;
}

/**
 * A name for one placement attempt of one restore workflow, safe as a file name (it names the node's journal):
 * readable from the workflow id `restore/<checkpointId>/<n>` where that fits, else from the run id.
 */
export function restoreAttemptId(workflowId: string, runId: string, attempt: number): string {
  const m = /^restore\/([A-Za-z0-9][A-Za-z0-9._-]*)\/(\d+)$/.exec(workflowId);
  const readable = m ? `${m[1]}.r${m[2]}.a${attempt}` : '';
  return readable && readable.length <= 128 && !readable.includes('..') ? readable : `run-${runId}.a${attempt}`;
}

/** The restore workflow a readable attempt id names (restoreAttemptId); null for one named from its run id. */
export function restoreOfAttempt(attemptId: string): { checkpointId: string; workflowId: string } | null {
  const m = /^([A-Za-z0-9][A-Za-z0-9._-]*)\.r(\d+)\.a\d+$/.exec(attemptId);
  return m ? { checkpointId: m[1], workflowId: restoreWorkflowId(m[1], Number(m[2])) } : null;
}
