/**
 * Pure types of the job workflow (`job/<jobId>`), the node activities that run a job's processes, and the
 * clients that show them. No I/O: safe in workflow code.
 *
 * A job is what an operator runs; each time its command is started (or resumed from a checkpoint) is a run.
 * States and their words follow `kubectl get pods`.
 */
import type { ProcessIdentity } from './journal';
import type { Readiness } from './readiness';

export type JobState =
  | 'Pending' // waiting for a node with room (placement), or being started
  | 'Running'
  | 'CrashLoopBackOff' // the last run failed; the next starts at nextRetryAt
  | 'StartFailure' // the command cannot be started (not found, not executable): terminal, nothing retried
  | 'CheckpointPullBackOff' // resuming from a checkpoint that cannot be fetched yet; retried with backoff
  | 'OOMKilled' // terminal (restart policy Never): the last run went over its memory limit
  | 'TimedOut' // terminal: the job ran past its --timeout; everything it started is gone
  | 'Preempted' // checkpointed for preemption; waiting to be placed again and resumed
  | 'Migrating' // checkpointed to move to another node (kybernate migrate); waiting to be resumed there
  | 'Succeeded'
  | 'Failed'
  | 'Quarantined' // past --max-restarts: no more restarts until `kybernate release`
  | 'Unknown'; // its node went Unhealthy or Left while the run was watched: not known whether it still runs

export const TERMINAL_JOB_STATES: readonly JobState[] = [
  'StartFailure',
  'OOMKilled',
  'TimedOut',
  'Succeeded',
  'Failed',
];
/**
 * Terminal states in which the job workflow fails (JobFailed, its status in the failure's details) so the
 * Temporal UI counts it as failed. Succeeded completes; a job cancelled by an operator ends Cancelled.
 */
export const FAILED_JOB_STATES: readonly JobState[] = ['StartFailure', 'OOMKilled', 'TimedOut', 'Failed'];

export type RestartPolicy = 'Always' | 'OnFailure' | 'Never';
export type JobTier = 'critical' | 'normal';

/** Enforced by the node with cgroups (v2 where the host has it, else v1). Absent: no limit. */
export interface JobLimits {
  /** CPU cores, fractions allowed (0.5 = half a core), as a CFS quota. */
  cpu?: number;
  memoryBytes?: number;
  pids?: number;
}

/** Kubernetes' CrashLoopBackOff: initialMs doubling up to capMs; reset once a run stayed up resetAfterMs. */
export interface BackoffPolicy {
  initialMs: number;
  capMs: number;
  resetAfterMs: number;
}

export const DEFAULT_BACKOFF: BackoffPolicy = { initialMs: 10_000, capMs: 300_000, resetAfterMs: 600_000 };
export const DEFAULT_MAX_RESTARTS = 10;

export interface JobSpec {
  jobId: string;
  command: string[];
  /** Absolute directory the command runs in on the node (the CLI passes its own). */
  cwd?: string;
  env?: Record<string, string>;
  user?: { uid: number; gid?: number };
  /** Run only on this node; otherwise placed by free VRAM like a restore. */
  node?: string;
  /** VRAM the job needs (0: CPU only). */
  vramBytes: number;
  limits: JobLimits;
  /** Wall-clock limit of the job from its first start; past it the job is TimedOut and cleaned up. */
  timeoutMs?: number;
  /** 0 (critical: never refused by admission) to 10 (shed first); default 5. See common/admission.ts. */
  priority: number;
  tier: JobTier;
  restartPolicy: RestartPolicy;
  maxRestarts: number;
  backoff: BackoffPolicy;
  /** Periodic checkpoints (leave-running) every this long, keeping the newest `keep`. */
  checkpointEveryMs?: number;
  keep?: number;
  /** A run counts as started (and a resumed run as Running) once this passes. */
  readiness?: Readiness;
  /**
   * How long the job stays Unknown on an Unhealthy (or Left) node before it is restarted elsewhere (evicted).
   * Absent: DEFAULT_EVICT_AFTER_MS, or DEFAULT_CRITICAL_EVICT_AFTER_MS for the critical tier.
   */
  evictAfterMs?: number;
}

export const DEFAULT_EVICT_AFTER_MS = 60_000;
export const DEFAULT_CRITICAL_EVICT_AFTER_MS = 20_000;

/**
 * A kill owed to an evicted run's old process (never two copies): settled when the old node is Ready again and
 * the process is killed there by identity, or when the node's registry is gone (node lost: nothing can run there).
 */
export interface FenceRecord {
  run: number;
  node: string;
  process: ProcessIdentity;
  /** When the eviction owed it (workflow time). */
  since: string;
  /** null: still owed. */
  settled: 'killed' | 'node lost' | null;
  settledAt: string | null;
  detail: string | null;
}

/** Why a run ended, in kubectl's words where it has them. */
export type RunEndReason =
  | 'Completed' // exit code 0
  | 'Error' // non-zero exit code
  | 'Signaled' // killed by a signal we did not send
  | 'OOMKilled'
  | 'TimedOut'
  | 'Preempted' // checkpointed and stopped for preemption
  | 'Migrated' // checkpointed and stopped to move to another node
  | 'Stopped' // stopped by a cancel or a release
  | 'LostWhileAgentDown' // gone while the node's agent was down, and no exit status was left
  | 'Evicted' // its node stayed Unhealthy past the grace: restarted elsewhere, the old copy fenced (killed when seen)
  | 'StartFailure';

export interface RunRecord {
  /** 1, 2, ...: the job's runs in order. A run resumed from a checkpoint is a new run. */
  run: number;
  node: string;
  startedAt: string;
  endedAt: string | null;
  exitCode: number | null;
  /** e.g. 'SIGKILL' when the run was killed by a signal. */
  signal: string | null;
  reason: RunEndReason | null;
  message: string | null;
  /** The checkpoint this run resumed from; null for a run started from scratch. */
  fromCheckpoint: string | null;
  /** The run's process (pid + start time: never a bare pid); null before it started. */
  process: ProcessIdentity | null;
  /** On its node: the log (CRI format, see RunLogLine) and the exit record the run's shim writes. */
  logFile: string | null;
  exitFile: string | null;
  /** S3 key of the run's log once the run ended and the log was stored. */
  logObject: string | null;
}

export interface JobEvent {
  at: string;
  /** kubectl-style reason: Scheduled, Started, BackOff, Killing, OOMKilled, Preempting, Resumed, Quarantined... */
  type: string;
  message: string;
}

export interface JobCheckpointRecord {
  checkpointId: string;
  takenAt: string;
  reason: 'periodic' | 'preemption' | 'migration';
  /** Durable | PendingUpload | Failed ... as the checkpoint workflow ended. */
  phase: string;
  /** Taken while the job was healthy (its run had not failed since): may serve as the last known-good. */
  healthy: boolean;
  deleted: boolean;
  /** The run it was taken of (a resume reuses that run's log and exit files) and its node. Absent in old records. */
  run?: number;
  node?: string;
}

export interface JobStatus {
  jobId: string;
  state: JobState;
  /** Why the job is in this state (the last run's message, the escalation's error...). */
  reason: string | null;
  node: string | null;
  /** Restarts counted against maxRestarts (a resume after preemption or an agent restart is not one). */
  restarts: number;
  createdAt: string;
  nextRetryAt: string | null;
  runs: RunRecord[];
  /** The newest events (bounded). */
  events: JobEvent[];
  checkpoints: JobCheckpointRecord[];
  /** The newest Durable checkpoint taken while the job was healthy. */
  lastGoodCheckpoint: string | null;
  /** Nodes the job failed on past its restart limit (never placed there again by the critical-tier restore). */
  failedOn: string[];
  /** Where escalation stored its diagnostics in S3 (diagnostics/<job>/<time>/). */
  diagnostics: string | null;
  spec: JobSpec;
  /** Back-to-back failed runs since the last backoff reset (the k of initialMs * 2^k); carried by continue-as-new. */
  backoffStep?: number;
  /** Where the next run starts from when the workflow continued as new between runs (null: from scratch). */
  resumeFrom?: string | null;
  /** Kills owed to evicted runs' old processes (and how each was settled); absent before fencing. */
  fences?: FenceRecord[];
}

/** Workflow handler names of the job workflow. */
export const JOB_STATUS_QUERY = 'status'; // = STATUS_QUERY (common/outcome.ts), the name every workflow answers
/** Update: checkpoint the running job for preemption, requeue it, and resume it from that checkpoint. */
export const JOB_PREEMPT_UPDATE = 'preempt';
/**
 * Update: checkpoint the running job, stop it and resume it from that checkpoint on another node, preferring
 * `to` (MigrateJobRequest). A job's process is moved only by its own workflow: moved from outside (a migrate
 * workflow), the job would see its run end and start it again beside the moved copy.
 */
export const JOB_MIGRATE_UPDATE = 'migrate';
/** Update: lift a quarantine; from scratch or from the last good checkpoint. */
export const JOB_RELEASE_UPDATE = 'release';
/** Signal (sent by the checkpoint workflow of a preemption): the job's process is checkpointed/stopped; requeue it. */
export const JOB_REQUEUE_SIGNAL = 'requeue';

export const jobWorkflowId = (jobId: string): string => `job/${jobId}`;

// ---- node activities of a job run (activities/node/job-*.ts) ----

export interface StartRunInput {
  jobId: string;
  run: number;
  command: string[];
  cwd?: string;
  env?: Record<string, string>;
  user?: { uid: number; gid?: number };
  limits: JobLimits;
  /** VRAM the run holds, recorded on the node (like a restored workload's) so placement counts it as used. */
  vramBytes?: number;
}

export interface StartRunResult {
  process: ProcessIdentity;
  logFile: string;
  exitFile: string;
  /**
   * When the node spawned it, by the node's clock: the same clock as the exit record's endedAt, so a run that
   * ends within the start's settle window does not show an end before its start. Absent in older results.
   */
  startedAt?: string;
}

/** What became of a run's process, found from the node (the shim's exit record, the cgroup's OOM count). */
export interface RunExit {
  exitCode: number | null;
  signal: string | null;
  reason: Extract<RunEndReason, 'Completed' | 'Error' | 'Signaled' | 'OOMKilled' | 'LostWhileAgentDown'>;
  message: string;
  endedAt: string;
}

/**
 * One line of a run's log: the CRI log format kubelet writes (`<RFC3339Nano> <stdout|stderr> <F|P> <text>`),
 * F for a full line, P for part of a longer one.
 */
export interface RunLogLine {
  time: string;
  stream: 'stdout' | 'stderr';
  partial: boolean;
  text: string;
}

export interface ReadRunLogInput {
  jobId: string;
  logFile: string;
  /** Byte offset to read from; the answer's nextOffset continues it (whole lines only: nothing lost or doubled). */
  offset: number;
  maxBytes?: number;
}

export interface ReadRunLogResult {
  lines: RunLogLine[];
  nextOffset: number;
  /** The file's size when read. */
  size: number;
}

/** What the job workflow starts with; `carried` is its state handed over by continue-as-new. */
export interface JobInput {
  spec: JobSpec;
  carried?: JobStatus;
}

/** The migrate update's input: the node to move the job to (another takes it if that one has no room). */
export interface MigrateJobRequest {
  to: string;
}

/** The preempt and migrate updates' answer: the checkpoint taken, and what became of the job. */
export interface PreemptResult {
  checkpointId: string;
  /** 'requeued': checkpointed and stopped, to be resumed from it; 'still-running': the checkpoint failed cleanly. */
  outcome: 'requeued' | 'still-running' | 'restarted-from-last-good';
  message: string;
}

/**
 * Why a checkpoint of an open job is not restored outside that job (by hand, or a restore workflow started
 * directly): the job would run twice. Names what moves or stops the job instead.
 */
export const openJobRefusal = (checkpointId: string, jobId: string, state: string): string =>
  `checkpoint ${checkpointId} is of job ${jobId}, which is still open (state ${state}): restored outside it the job ` +
  `would run twice. Move the job with 'kybernate migrate ${jobId}', requeue it with 'kybernate preempt ${jobId}', ` +
  `or stop it with 'kybernate cancel ${jobId}' before restoring`;
