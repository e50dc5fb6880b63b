/** Stable ApplicationFailure types; workflows branch on these, operators grep for them. */
export const ErrorType = {
  InvalidInput: 'InvalidInput',
  NoSuchProcess: 'NoSuchProcess',
  CudaUnavailable: 'CudaUnavailable',
  CudaError: 'CudaError',
  CriuDumpFailed: 'CriuDumpFailed',
  CriuRestoreFailed: 'CriuRestoreFailed',
  NoSpace: 'NoSpace',
  ChecksumMismatch: 'ChecksumMismatch',
  MetadataInvalid: 'MetadataInvalid',
  S3Unavailable: 'S3Unavailable',
  CheckpointNotFound: 'CheckpointNotFound',
} as const;
export type ErrorType = (typeof ErrorType)[keyof typeof ErrorType];
