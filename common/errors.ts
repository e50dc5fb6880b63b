/** Stable ApplicationFailure types; workflows branch on these, operators grep for them. */
export const ErrorType = {
  InvalidInput: 'InvalidInput',
  NoSuchProcess: 'NoSuchProcess',
  /** A workload could not be started (no such program, not executable, exited at once); nothing is left running. */
  StartFailure: 'StartFailure',
  /**
   * The job asks for limits (memory, pids, cpu) and this node cannot enforce them: cgroups are not mounted or
   * not writable. Nothing was started; another node may have them.
   */
  LimitsUnavailable: 'LimitsUnavailable',
  /** A workload with this job id is already running on the node: a second one would be untracked. */
  JobAlreadyRunning: 'JobAlreadyRunning',
  /** Tasks of a stopped job are still in its cgroup after SIGKILL (stuck in the kernel): retried. */
  ProcessesRemain: 'ProcessesRemain',
  CudaUnavailable: 'CudaUnavailable',
  CudaError: 'CudaError',
  /** The driver's lock did not get the process within its timeout (CUDA_ERROR_TIMEOUT); the process was left running. */
  CudaTimeout: 'CudaTimeout',
  CriuDumpFailed: 'CriuDumpFailed',
  CriuRestoreFailed: 'CriuRestoreFailed',
  /**
   * A step of a checkpoint already has a journal record: a dump is never silently taken again of a process
   * whose state after the first try is unknown.
   */
  StepAlreadyStarted: 'StepAlreadyStarted',
  NoSpace: 'NoSpace',
  /** The copy of a checkpoint staged in memory could not be written to the node's disk. */
  PersistFailed: 'PersistFailed',
  /** Bytes differ from their sealed SHA-256 (a local copy changed after sealing, or a corrupt S3 object). */
  ChecksumMismatch: 'ChecksumMismatch',
  MetadataInvalid: 'MetadataInvalid',
  S3Unavailable: 'S3Unavailable',
  /**
   * S3 answered and refused for good (AccessDenied, NoSuchBucket, InvalidAccessKeyId, SignatureDoesNotMatch):
   * retrying at once cannot help; an operator fixes the credentials, policy or bucket.
   */
  S3Rejected: 'S3Rejected',
  /** A checkpoint with this id exists already (workflow, S3 or node): ids are never reused. */
  CheckpointExists: 'CheckpointExists',
  CheckpointNotFound: 'CheckpointNotFound',
  /** Not enough free VRAM on the node for a CUDA restore: try another node. */
  CudaOutOfMemory: 'CudaOutOfMemory',
  /**
   * CRIU was killed mid-restore (the agent shut down and cancelled the step): nothing is known about the
   * checkpoint, and a process it resumed may run; the restore asks the node, as after a lost agent.
   */
  CriuInterrupted: 'CriuInterrupted',
  /** The checkpoint's pids are taken on this host: try another node. */
  CriuPidConflict: 'CriuPidConflict',
  /** Restored and alive, but not making progress (verifyProgress, kept for workflows started before verifyRunning). */
  NoProgress: 'NoProgress',
  /** Restored, but stopped, a zombie, or its CUDA state is not running: try another node. */
  NotRunning: 'NotRunning',
  /** Restored and running, but its declared readiness probe did not pass: try another node. */
  NotReady: 'NotReady',
  NoNodeFits: 'NoNodeFits',
  /**
   * No reporting node can restore the checkpoint (GPU model, driver, CRIU, CPU flags; common/compat.ts): the
   * restore fails before any bytes move, naming each node and why.
   */
  NoCompatibleNode: 'NoCompatibleNode',
  /** More VRAM than any single GPU anywhere has: a multi-GPU job, out of scope (one workload, one GPU). */
  MultiGpuUnsupported: 'MultiGpuUnsupported',
  /** The node's agent was lost mid-step and the node reports that nothing of the step remains: try another node. */
  AgentLost: 'AgentLost',
  /**
   * The agent was lost mid-restore and never answered what became of the restored process: the restore stops
   * rather than place a second copy beside one that may run.
   */
  RestoreOutcomeUnknown: 'RestoreOutcomeUnknown',
  /**
   * A restore started outside any job or migration, of a checkpoint whose job's workflow still runs: the job
   * would run twice. Refused before any node is touched; the job is moved with migrate or preempt, or cancelled.
   */
  JobOpen: 'JobOpen',
  CheckpointNotOnNode: 'CheckpointNotOnNode',
  RestoreFailed: 'RestoreFailed',
  MigrationFailed: 'MigrationFailed',
  /** A checkpoint workflow that ended Failed (its status, with every step, is the failure's first detail). */
  CheckpointFailed: 'CheckpointFailed',
  /** A job that ended Failed, OOMKilled, StartFailure or TimedOut (its status is the failure's first detail). */
  JobFailed: 'JobFailed',
  /** The alert webhook (KYBERNATE_ALERT_WEBHOOK) refused or did not answer: retried by Temporal. */
  WebhookFailed: 'WebhookFailed',
  /**
   * A sweep's preemption the job refused (not Running, being preempted already) or whose job is gone: nothing
   * was done to it; the sweep records it and goes on.
   */
  PreemptRefused: 'PreemptRefused',
  /** A preemption sweep could not list the running jobs: nothing was preempted (its status is the first detail). */
  SweepFailed: 'SweepFailed',
  /**
   * A node's liveness watch reached an agent process other than the one it was scheduled for (a new agent took
   * the node's queue): that watch says nothing about the agent it names, the registry schedules it again.
   */
  WatchOtherAgent: 'WatchOtherAgent',
} as const;
export type ErrorType = (typeof ErrorType)[keyof typeof ErrorType];
