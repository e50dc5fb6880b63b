/** Pure types of the restore and migration workflows. */
import type { Tier } from './checkpoint';

export type RestorePhase = 'Placing' | 'Fetching' | 'RestoringProcess' | 'RestoringVram' | 'Unlocking' | 'Verifying' | 'Running' | 'Failed';

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
}

export interface Candidate {
  node: string;
  freeVramBytes: number;
  vramSource: 'measured' | 'declared' | 'none';
}

export interface Reservation {
  reservationId: string;
  node: string;
  bytes: number;
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
}
