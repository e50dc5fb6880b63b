/**
 * Pure types and rules of scheduled preemption: a Temporal Schedule (`kybernate preempt schedule create`) starts
 * a `preemptionSweep` workflow (workflows/sweep.ts) that preempts the least important running jobs. No I/O: safe
 * in workflow code.
 *
 * Priority: 0 is the most important (critical) and 10 the least, as admission reads it. "Below priority p" means
 * less important than p, i.e. a priority NUMBER greater than p. A job with priority 0 or tier critical is never a
 * victim, whatever the sweep asks.
 */
import type { JobTier, PreemptResult } from './job';

export const MIN_SWEEP_PRIORITY = 0;
export const MAX_SWEEP_PRIORITY = 10;
/** Default --max: one victim per sweep (a schedule that fires often moves jobs slowly, never all at once). */
export const DEFAULT_SWEEP_MAX = 1;
/** Upper bound of --max: a sweep is a trim, not an evacuation. */
export const MAX_SWEEP_MAX = 1000;

/** What one sweep is asked to do (the schedule's action arguments). */
export interface SweepInput {
  /** The schedule that started it (null: started by hand). */
  schedule: string | null;
  /** Victims have a priority number above this (less important); absent: any non-critical job. */
  belowPriority?: number;
  /** At most this many preemptions are tried. */
  max: number;
  /** Only jobs running on nodes of this zone. */
  zone?: string;
}

/** A running job as the sweep sees it (control activity runningJobs). */
export interface RunningJob {
  jobId: string;
  priority: number;
  tier: JobTier;
  createdAt: string;
  node: string;
  /** The zone its node reported (null: none reported, or the node did not answer). */
  zone: string | null;
}

/** Why a running job was not chosen. */
export type SkipReason = 'critical' | 'not-below-priority' | 'other-zone' | 'over-max' | 'unanswered';

export interface SweepSkip {
  jobId: string;
  reason: SkipReason;
  message: string;
}

/**
 * The job's answer (requeued, still-running, restarted-from-last-good), or 'refused' (the job turned it down:
 * nothing was done to it), or 'unknown' (the call failed or timed out: the job's own status has the truth).
 */
export type PreemptionOutcome = PreemptResult['outcome'] | 'refused' | 'unknown';

export interface SweepVictim {
  job: RunningJob;
  /** Why it was chosen, in words. */
  why: string;
  /** null while its preemption is under way. */
  outcome: PreemptionOutcome | null;
  checkpointId: string | null;
  message: string | null;
}

export type SweepPhase = 'Listing' | 'Preempting' | 'Done';

export interface SweepStatus {
  phase: SweepPhase;
  input: SweepInput;
  startedAt: string;
  finishedAt: string | null;
  /** Running jobs seen. */
  seen: number;
  /** In the order they are preempted. */
  victims: SweepVictim[];
  skipped: SweepSkip[];
  /** One line: what the sweep did. */
  summary: string | null;
}

/** What is wrong with a sweep's input, naming the field; null when it is fine. */
export function sweepInputProblem(input: SweepInput): string | null {
  if (input.belowPriority !== undefined) {
    const p = input.belowPriority;
    if (!Number.isInteger(p) || p < MIN_SWEEP_PRIORITY || p > MAX_SWEEP_PRIORITY)
      return `belowPriority: must be a whole number from ${MIN_SWEEP_PRIORITY} to ${MAX_SWEEP_PRIORITY} (got ${p})`;
  }
  if (!Number.isInteger(input.max) || input.max < 1 || input.max > MAX_SWEEP_MAX)
    return `max: must be a whole number from 1 to ${MAX_SWEEP_MAX} (got ${input.max})`;
  if (input.zone !== undefined && (typeof input.zone !== 'string' || input.zone.length === 0))
    return 'zone: must be a non-empty name';
  return null;
}

export const isCritical = (j: Pick<RunningJob, 'priority' | 'tier'>): boolean =>
  j.priority === 0 || j.tier === 'critical';

/**
 * The sweep's choice: eligible jobs (not critical, priority number above belowPriority, in the zone) ordered
 * least important first (highest priority number), then youngest (newest createdAt), then by id so the order is
 * total; the first `max` are victims, the rest skipped as over-max.
 */
export function pickVictims(
  jobs: RunningJob[],
  input: Pick<SweepInput, 'belowPriority' | 'max' | 'zone'>,
): { victims: { job: RunningJob; why: string }[]; skipped: SweepSkip[] } {
  const skipped: SweepSkip[] = [];
  const eligible: RunningJob[] = [];
  for (const j of jobs) {
    if (isCritical(j)) {
      skipped.push({
        jobId: j.jobId,
        reason: 'critical',
        message: j.tier === 'critical' ? 'tier critical: never preempted' : 'priority 0: never preempted',
      });
    } else if (input.belowPriority !== undefined && j.priority <= input.belowPriority) {
      skipped.push({
        jobId: j.jobId,
        reason: 'not-below-priority',
        message: `priority ${j.priority} is not below ${input.belowPriority} (victims have a number above it)`,
      });
    } else if (input.zone !== undefined && j.zone !== input.zone) {
      skipped.push({
        jobId: j.jobId,
        reason: 'other-zone',
        message: `on ${j.node} in zone ${j.zone ?? '(none reported)'}, not ${input.zone}`,
      });
    } else eligible.push(j);
  }
  eligible.sort(
    (a, b) =>
      b.priority - a.priority || Date.parse(b.createdAt) - Date.parse(a.createdAt) || a.jobId.localeCompare(b.jobId),
  );
  const victims = eligible.slice(0, input.max).map((job, i) => ({
    job,
    why: `priority ${job.priority}${input.belowPriority !== undefined ? ` (below ${input.belowPriority})` : ''}, created ${job.createdAt}: ${ordinal(i + 1)} least important of ${eligible.length} eligible`,
  }));
  for (const j of eligible.slice(input.max))
    skipped.push({
      jobId: j.jobId,
      reason: 'over-max',
      message: `eligible, but the sweep preempts at most ${input.max}`,
    });
  return { victims, skipped };
}

function ordinal(n: number): string {
  const s = n % 100 >= 11 && n % 100 <= 13 ? 'th' : (['th', 'st', 'nd', 'rd'][n % 10] ?? 'th');
  return `${n}${s}`;
}

/** Workflow id prefix of the sweeps a schedule starts (the server appends the start time). */
export const sweepWorkflowIdPrefix = (schedule: string): string => `sweep/${schedule}`;
/** A preemption schedule's id in Temporal. */
export const preemptionScheduleId = (name: string): string => `preempt/${name}`;
export const PREEMPTION_SCHEDULE_PREFIX = 'preempt/';
