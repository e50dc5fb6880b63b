import type { ProcessIdentity } from '../common/journal';
import type { JobLimits, RunExit, RunRecord, StartRunInput, StartRunResult } from '../common/job';

/**
 * The node activities of a job run, as the job workflow calls them (activities/node/job-run.ts implements
 * them; the integrator checks the two match). Declared here so the workflow compiles without them.
 */
export interface JobNodeActivities {
  /** StartFailure (non-retryable) when the command cannot start. */
  startRun(input: StartRunInput): Promise<StartRunResult>;
  /** Heartbeats; returns when that very process (pid + start time) is gone. */
  awaitRunExit(input: { jobId: string; run: number; process: ProcessIdentity; exitFile: string }): Promise<RunExit>;
  /** Idempotent: SIGTERM, SIGKILL after graceMs, then the job's cgroup (and every straggler in it) removed. */
  stopRun(input: { jobId: string; run: number; process: ProcessIdentity | null; graceMs: number; reason: string }): Promise<{ signal: 'SIGTERM' | 'SIGKILL' | null; killedStragglers: number }>;
  /** For a run resumed from a checkpoint: its cgroup created and the restored tree moved in. */
  attachRunLimits(input: { jobId: string; limits: JobLimits; process: ProcessIdentity }): Promise<{ cgroup: string[] }>;
  archiveRunLog(input: { jobId: string; run: number; logFile: string }): Promise<{ key: string; bytes: number }>;
  collectDiagnostics(input: { jobId: string; at: string; error: string; runs: RunRecord[]; logFile: string | null }): Promise<{ prefix: string }>;
  inspectRun(input: { process: ProcessIdentity }): Promise<{ running: boolean }>;
}
