/**
 * The documents `kybernate <command> --json` prints: one JSON document on stdout per command, or on failure
 * {"error":{"code","message"}} on stderr, with the same exit codes as without --json. These shapes are a
 * contract (README's "--json" section): fields are added, never renamed or removed.
 */
import type { AdmissionStatus } from '../common/admission';
import type { CheckpointStatus } from '../common/checkpoint';
import type { JobStatus, PreemptResult } from '../common/job';
import type { RestoreStatus } from '../common/restore';
import type { WorkloadInfo } from '../activities/node/process';
import type { MigrateStatus } from '../workflows/migrate';
import type { NodeRecord } from '../workflows/node';
import type { CheckpointListEntry } from './api';
import type { ApplyOutcome } from './apply';
import { describeError, type ErrorCode } from './errors';
import type { JobListEntry } from './jobs';
import type { CheckpointRecord } from './record';
import type { PreemptionScheduleInfo } from './schedules';
import type { ChunkGcScheduleInfo } from './chunk-gc-schedule';

/** `checkpoint`: status is null with --no-wait. A preemption through the job's workflow is a PreemptJson instead. */
export interface CheckpointJson {
  checkpointId: string;
  workflowId: string;
  status: CheckpointStatus | null;
}
/** `preempt`, and `checkpoint --reason preemption` of a job run by a job workflow. */
export interface PreemptJson {
  jobId: string;
  result: PreemptResult;
}
/** `preempt schedule create|describe|pause|unpause`: the schedule after. */
export interface ScheduleJson {
  schedule: PreemptionScheduleInfo;
}
/** `preempt schedule list`. */
export interface SchedulesJson {
  schedules: PreemptionScheduleInfo[];
}
/** `preempt schedule trigger|delete`: what was done to which schedule. */
export interface ScheduleActionJson {
  name: string;
  action: 'triggered' | 'deleted';
}
/** `gc-schedule set|show`: the schedule after (null: there is none). */
export interface ChunkGcScheduleJson {
  schedule: ChunkGcScheduleInfo | null;
}
/** `gc-schedule trigger|delete`: what was done, and whether there was a schedule to do it to. */
export interface ChunkGcScheduleActionJson {
  action: 'triggered' | 'deleted';
  found: boolean;
}
/** `restore`: status is null with --no-wait. */
export interface RestoreJson {
  checkpointId: string;
  workflowId: string;
  status: RestoreStatus | null;
}
/** `migrate`: status is null with --no-wait. */
export interface MigrateJson {
  jobId: string;
  checkpointId: string;
  workflowId: string;
  status: MigrateStatus | null;
}
/** `run`: status is null without --wait. */
export interface RunJson {
  jobId: string;
  workflowId: string;
  status: JobStatus | null;
}
/** `workload`. */
export interface WorkloadJson {
  node: string;
  workload: WorkloadInfo;
}
/** `jobs`: startedAt is an ISO time; status null when it could not be had (problem says why). */
export interface JobsJson {
  jobs: (Omit<JobListEntry, 'startedAt'> & { startedAt: string })[];
}
/** `release`: the job's status after. */
export interface ReleaseJson {
  jobId: string;
  fromCheckpoint: boolean;
  status: JobStatus;
}
/** `cancel`: closed is whether the job had closed when the command returned (false with --no-wait). */
export interface CancelJson {
  jobId: string;
  waited: boolean;
  closed: boolean;
  status: JobStatus | null;
}
/** `logs` (not with --follow: a stream is not one document). */
export interface LogsJson {
  jobId: string;
  lines: { time: string; stream: 'stdout' | 'stderr'; partial: boolean; text: string }[];
  notes: string[];
}
/** `apply`. */
export interface ApplyJson {
  results: ApplyOutcome[];
  applied: number;
  unchanged: number;
  failed: number;
}
/** `checkpoints`: sizeBytes only with --job (null: not in S3). */
export interface CheckpointsJson {
  checkpoints: (CheckpointListEntry & { sizeBytes?: number | null })[];
}
/** `describe <checkpoint>` and `describe job <job>`. */
export type DescribeJson = { checkpoint: CheckpointStatus | CheckpointRecord } | { job: JobStatus };
/** `nodes`. */
export interface NodesJson {
  nodes: (NodeRecord & { node: string })[];
}
/** `up`. */
export interface UpJson {
  temporal: { address: string; uiUrl: string };
  s3: { endpoint: string; bucket: string };
  logs: string;
}
/** `down`. */
export interface DownJson {
  stopped: true;
}
/** `restart`: pid of the component now running (or, with --stop-only, the one stopped). */
export interface RestartJson {
  component: string;
  running: boolean;
  pid: number;
  log: string | null;
}
/** `fault`: what the proxy now does, in words. */
export interface FaultJson {
  link: string;
  action: string;
  value: string | null;
  result: string;
}
/** `status`: running false when no local stack runs. */
export interface StatusJson {
  running: boolean;
  uiUrl: string | null;
  components: { component: string; pid: number | null; healthy: boolean; detail: string }[];
  /** Admission's state (null: never started, or not reachable: see admissionProblem). Absent when no stack runs. */
  admission?: AdmissionStatus | null;
  admissionProblem?: string | null;
}

/** `admission`: its state (null: it never ran and no setting was given). */
export interface AdmissionJson {
  admission: AdmissionStatus | null;
}

/** The document an error becomes (on stderr), with the exit code it keeps. */
export interface ErrorJson {
  error: { code: ErrorCode; message: string };
}

export function errorJson(e: unknown): { doc: ErrorJson; exitCode: number } {
  const { code, message, exitCode } = describeError(e);
  return { doc: { error: { code, message } }, exitCode };
}

/** One JSON document, on one line (`jq` reads it; a pretty one is `| jq .`). */
export function jsonText(doc: object): string {
  return JSON.stringify(doc);
}

export function jobsJson(rows: JobListEntry[]): JobsJson {
  return { jobs: rows.map((r) => ({ ...r, startedAt: r.startedAt.toISOString() })) };
}

export function applyJson(results: ApplyOutcome[]): ApplyJson {
  const count = (w: ApplyOutcome['result']): number => results.filter((r) => r.result === w).length;
  return { results, applied: count('applied'), unchanged: count('unchanged'), failed: count('failed') };
}
