import type { CompatRecord } from './compat';
/** Pure types shared by the checkpoint workflow, its activities and clients. No I/O: safe in workflow code. */

import type { StepOutcome } from './journal';

export type CheckpointPhase =
  | 'Pending'
  | 'Locking'
  | 'DumpingVram'
  | 'DumpingProcess'
  | 'Sealing'
  | 'Uploading'
  | 'Durable'
  | 'PendingUpload'
  | 'Failed';

/** Where the checkpoint's only complete copy is: memory (staged, not yet durable), the node's disk, or S3. */
export type Tier = 's3' | 'nvme' | 'memory';

export type CheckpointReason = 'manual' | 'preemption';

export interface CheckpointRequest {
  checkpointId: string;
  jobId: string;
  node: string;
  /** The process to checkpoint; without it, the workload the node's agent started for jobId. */
  pid?: number;
  /** Dump and let the process run on (a copy), instead of stopping it. */
  leaveRunning: boolean;
  reason: CheckpointReason;
  /** VRAM the workload needs on restore (declared by its job; 0 for a CPU-only process). */
  vramBytes?: number;
  /** Upload attempts before falling back to tier nvme; small in tests. */
  uploadMaxAttempts?: number;
}

export interface CudaStepResult {
  /** 'skipped' when the process holds no CUDA context. */
  outcome: 'done' | 'skipped';
  detail: string;
}

export interface DumpResult {
  imageBytes: number;
  durationMs: number;
  processStopped: boolean;
  /** Written to the node's memory (tmpfs), not its disk: the copy to disk is still to come. */
  staged?: boolean;
  /**
   * How long the process stood still during the dump, as CRIU measured it (its stats-dump): with --leave-running,
   * the pause the workload felt. Absent when CRIU recorded none (and in results from before it was read).
   */
  frozenMs?: number;
}

export interface SealResult {
  files: number;
  totalBytes: number;
  /** Null when the seal left the large files to the upload to hash (streamed): the upload commits metadata.json. */
  metadataSha256: string | null;
  /** Files whose SHA-256 the upload computes as it sends them (absent: all hashed here). */
  streamed?: number;
  /** NVML's VRAM of the process tree at checkpoint (absent in results from before it was measured, or without NVML). */
  measuredVramBytes?: number;
  /** metadata.json's compatibility record. */
  compat?: CompatRecord;
}

/**
 * The node steps of a checkpoint, each journaled under its checkpoint id (journal kind 'checkpoint'):
 * the forward steps, then the compensations. criuRestoreInPlace: the workload brought back from its own images.
 */
export const CHECKPOINT_STEPS = [
  'cudaLock',
  'cudaCheckpoint',
  'criuDump',
  'seal',
  'upload',
  'persist',
  'cudaRestore',
  'cudaUnlock',
  'criuRestoreInPlace',
] as const;
export type CheckpointStep = (typeof CHECKPOINT_STEPS)[number];

/** A process named by pid, and by start time where known (resolveTarget returns both; old inputs have only the pid). */
export interface ProcessRef {
  pid: number;
  startTime?: number;
}

/**
 * What a node really holds for a checkpoint after the workflow lost sight of its agent (a timeout): the
 * journal's last word on every step, the state of the checkpointed process, and the bytes on the node.
 */
export interface CheckpointInspection {
  checkpointId: string;
  steps: Record<CheckpointStep, StepOutcome>;
  process: {
    /**
     * gone: no process with this pid and start time (exited, killed, or the pid now names another process);
     * stopped: state T or t (frozen by CRIU, a tracer or SIGSTOP); running: anything else.
     */
    state: 'gone' | 'running' | 'stopped';
    /** The process still holds the pid and start time it was resolved with (false when gone). */
    sameIdentity: boolean;
    /** The pid is alive but names another process: never kill it. */
    pidReused: boolean;
    /** /proc/<pid>/stat state letter, null when gone. */
    procState: string | null;
    /** Non-null while something ptraces the process: a CRIU still at work on it. */
    tracerPid: number | null;
    /** CUDA driver state ('running', 'locked', 'checkpointed', 'none' without CUDA or driver...). */
    cuda: string;
  };
  images: {
    /** Where the dump is: staged in memory, on the node's disk, or nowhere. */
    location: 'memory' | 'disk' | null;
    /** CRIU writes inventory.img last: without it the images are certainly incomplete. */
    inventory: boolean;
    /** The dump step's 'done' record is there and so is inventory.img: a dump the workload can be restored from. */
    complete: boolean;
  };
  metadata: {
    /** metadata.json exists (it is written last and atomically by the seal). */
    committed: boolean;
    /** ...parses, names this checkpoint and every file it lists exists with its size. */
    valid: boolean;
    error: string | null;
  };
}

export interface UploadResult {
  bucket: string;
  prefix: string;
  bytesSent: number;
  partsSent: number;
  /** Parts found already uploaded (from heartbeat details) and not sent again; chunks the bucket already held. */
  partsResumed: number;
  /** Format v2: bytes of chunks the bucket already held (this or another checkpoint's), so not sent again. */
  bytesReused?: number;
  chunksReused?: number;
  /**
   * SHA-256 of the metadata.json uploaded last; with hashing streamed, the upload committed it (locally, then to
   * S3) from the hashes its read computed. Absent in results from before it was recorded.
   */
  metadataSha256?: string;
}

export interface AttemptRecord {
  phase: CheckpointPhase;
  outcome: 'ok' | 'failed' | 'compensated' | 'skipped';
  detail: string;
  /** Workflow time (deterministic), ISO 8601. */
  at: string;
}

export interface CheckpointStatus {
  checkpointId: string;
  jobId: string;
  node: string;
  pid: number | null;
  vramBytes: number;
  phase: CheckpointPhase;
  tier: Tier | null;
  failureReason: string | null;
  history: AttemptRecord[];
  upload: UploadResult | null;
  /**
   * SHA-256 of metadata.json as committed at seal: every restore checks the metadata.json it reads against it,
   * so a replaced metadata.json (naming other bytes) is refused. Absent in workflows started before it existed.
   */
  metadataSha256?: string | null;
  /** VRAM measured at checkpoint (NVML, the process tree); vramBytes is the declared figure (--vram, an override). */
  measuredVramBytes?: number;
  /** What a restore needs of its node, as sealed into metadata.json. */
  compat?: CompatRecord;
  /**
   * The workload is gone and no checkpoint of this attempt can bring it back, and why (e.g. the dump stopped
   * it and the images turned out corrupt). Null while the workload runs or is restorable.
   */
  workloadLost?: string | null;
  /**
   * With --leave-running: how long the dump held the workload frozen (CRIU's measure), the pause it felt before
   * running on. Absent when the dump stopped it, or CRIU recorded no figure.
   */
  frozenMs?: number;
}

/** What a workflow returns; identical to the final status. */
export type CheckpointOutcome = CheckpointStatus;

/**
 * When S3 acknowledged the whole checkpoint (the upload's record in its history): the moment it became
 * Durable. The workflow may finish later: after a staged dump it then waits for the copy to disk and frees
 * the memory. Null when nothing was uploaded by the workflow itself.
 */
export function durableAt(s: CheckpointStatus): number | null {
  const rec = s.history.find((h) => h.phase === 'Uploading' && h.outcome === 'ok' && / parts sent, /.test(h.detail));
  return rec ? Date.parse(rec.at) : null;
}

/** How far a long node step that moves a checkpoint's bytes is: kept in its heartbeat details for watchers. */
export interface ActivityBytes {
  done: number;
  total: number;
}
