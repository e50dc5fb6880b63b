/**
 * Kybernate's client library: `import { KybernateClient } from 'kybernate'`. Everything the CLI does goes
 * through what this file exports; the CLI adds only parsing and formatting.
 */
export { KybernateClient, type CheckpointListEntry, type OnStatus } from './api';
export { JobsApi, JobExistsError, type JobListEntry } from './jobs';
export {
  OVERLAP_POLICIES,
  type OverlapPolicy,
  parsePreemptionSchedule,
  type PreemptionScheduleInfo,
  type PreemptionScheduleRequest,
  ScheduleExistsError,
  SchedulesApi,
} from './schedules';
export type { RunningJob, SweepInput, SweepStatus, SweepVictim } from '../common/sweep';
export {
  describeError,
  describeFailureChain,
  type ErrorCode,
  EXIT_FAILURE,
  EXIT_OK,
  EXIT_USAGE,
  KybernateError,
  AdmissionRefusedError,
  UnavailableError,
  WorkflowFailedWithoutStatusError,
} from './errors';
export {
  isCheckpointStatus,
  isJobStatus,
  isMigrateStatus,
  isRestoreStatus,
  resultOf,
  type ResultSource,
  statusFromFailure,
} from './result';
export { CONNECT_TIMEOUT_MS, QUERY_TIMEOUT_MS, WATCH_INTERVAL_MS } from './timeouts';
export type { CheckpointRecord } from './record';
export type { LogOptions, LogSink } from './job-logs';
export { InvalidInputError } from '../common/ids';
export type { KybernateConfig, S3Config } from '../common/config';
export type { CheckpointRequest, CheckpointStatus, Tier } from '../common/checkpoint';
export type { RestoreRequest, RestoreStatus } from '../common/restore';
export type { MigrateRequest, MigrateStatus } from '../workflows/migrate';
export type { JobSpec, JobStatus, PreemptResult } from '../common/job';
export type { Readiness } from '../common/readiness';
export type { NodeRecord } from '../workflows/node';
export type { AdmissionConfig, AdmissionRefusal, AdmissionStatus } from '../common/admission';
export { DEFAULT_PRIORITY } from '../common/admission';
