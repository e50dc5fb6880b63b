/**
 * Kybernate's own Prometheus metrics: names, units and the labels each carries. Served beside the Temporal SDK's
 * metrics (temporal_*) on each worker's endpoint (workers/metrics.ts). Labels are bounded: node, phase, type
 * (an ErrorType or 'Error'), outcome, reason; never a job or checkpoint id. Pure: safe in workflow code.
 *
 * Every agent metric also carries node (a global tag of the agent's endpoint), as do the SDK's own metrics there.
 */
export const Metric = {
  /** Histogram, seconds; labels node, phase, outcome (ok | failed). One node step of a checkpoint. */
  checkpointPhaseSeconds: 'kybernate_checkpoint_phase_duration_seconds',
  /** Counter, bytes; labels node, phase (DumpingProcess: images written, Sealing: bytes sealed, Uploading: bytes sent, Persisting: copied to disk). */
  checkpointBytes: 'kybernate_checkpoint_bytes_total',
  /** Histogram, seconds; labels node, phase, outcome. One node step of a restore. */
  restorePhaseSeconds: 'kybernate_restore_phase_duration_seconds',
  /**
   * Histogram, seconds; label node. How long a --leave-running dump held the workload frozen (CRIU's own measure):
   * the pause a checkpoint costs a workload that runs on.
   */
  checkpointFrozenSeconds: 'kybernate_checkpoint_frozen_seconds',
  /**
   * Counter, bytes; labels node, phase (Fetching), source (s3 | nvme | node-chunks: chunks read from other
   * checkpoints the node held instead of fetched from S3).
   */
  restoreBytes: 'kybernate_restore_bytes_total',
  /** Counter; labels node, phase, type. A node step of a checkpoint or restore that failed, by error type. */
  stepFailures: 'kybernate_step_failures_total',
  /** Gauge; label node. Checkpoints sealed on this node and not yet in S3 (tier nvme, waiting for promotion). */
  pendingUpload: 'kybernate_checkpoints_pending_upload',
  /** Gauges, bytes; label node. From the node's last inventory. */
  nodeVramFree: 'kybernate_node_vram_free_bytes',
  nodeVramTotal: 'kybernate_node_vram_total_bytes',
  nodeDiskFree: 'kybernate_node_disk_free_bytes',
  /** Counter; labels node, outcome (ok | failed). Inventory reports to the node's registry workflow: its health as the control plane sees it. */
  nodeReports: 'kybernate_node_inventory_reports_total',
  /** Counter (control worker); labels node, outcome (Durable | PendingUpload | Failed), tier. Checkpoint workflows reaching an end state. */
  checkpoints: 'kybernate_checkpoints_total',
  /** Counter (control worker); labels outcome (Running | Failed), type (ErrorType of a failure, 'none' when running). */
  restores: 'kybernate_restores_total',
  /** Counter (control worker); label reason (how the run ended: Failed, OOMKilled, Completed...). A job run started again after its exit. */
  jobRestarts: 'kybernate_job_restarts_total',
} as const;

/** Histogram bucket bounds, in seconds, for the phase durations: from a CUDA lock (ms) to a multi-GB upload (an hour). */
export const PHASE_SECONDS_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600];

/** Default ports of the metrics endpoints outside a local stack (KYBERNATE_METRICS_ADDRESS overrides, 'off' disables). */
export const DEFAULT_AGENT_METRICS_PORT = 9464;
export const DEFAULT_CONTROL_METRICS_PORT = 9465;
