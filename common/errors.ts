/** Stable ApplicationFailure types; workflows branch on these, operators grep for them. */
export const ErrorType = {
  InvalidInput: 'InvalidInput',
  NoSuchProcess: 'NoSuchProcess',
  CudaUnavailable: 'CudaUnavailable',
  CudaError: 'CudaError',
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
  ChecksumMismatch: 'ChecksumMismatch',
  MetadataInvalid: 'MetadataInvalid',
  S3Unavailable: 'S3Unavailable',
  CheckpointNotFound: 'CheckpointNotFound',
  /** Not enough free VRAM on the node for a CUDA restore: try another node. */
  CudaOutOfMemory: 'CudaOutOfMemory',
  /** The checkpoint's pids are taken on this host: try another node. */
  CriuPidConflict: 'CriuPidConflict',
  /** Restored and alive, but not making progress. */
  NoProgress: 'NoProgress',
  NoNodeFits: 'NoNodeFits',
  CheckpointNotOnNode: 'CheckpointNotOnNode',
  RestoreFailed: 'RestoreFailed',
  MigrationFailed: 'MigrationFailed',
} as const;
export type ErrorType = (typeof ErrorType)[keyof typeof ErrorType];
