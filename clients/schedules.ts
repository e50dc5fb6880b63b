import {
  type ScheduleDescription,
  ScheduleAlreadyRunning,
  ScheduleNotFoundError,
  type ScheduleOverlapPolicy,
  WorkflowNotFoundError,
} from '@temporalio/client';
import { cronProblem } from '../common/cron';
import { assertSafeId, InvalidInputError } from '../common/ids';
import { CONTROL_QUEUE } from '../common/queues';
import {
  DEFAULT_SWEEP_MAX,
  MAX_SWEEP_MAX,
  MAX_SWEEP_PRIORITY,
  MIN_SWEEP_PRIORITY,
  PREEMPTION_SCHEDULE_PREFIX,
  preemptionScheduleId,
  type SweepInput,
  type SweepStatus,
  sweepWorkflowIdPrefix,
} from '../common/sweep';
// Started by reference (see api.ts): the function's name is the workflow type.
import { preemptionSweep } from '../workflows/sweep';
import type { KybernateClient } from './api';
import { KybernateError } from './errors';

export const OVERLAP_POLICIES = [
  'SKIP',
  'BUFFER_ONE',
  'BUFFER_ALL',
  'CANCEL_OTHER',
  'TERMINATE_OTHER',
  'ALLOW_ALL',
] as const;
export type OverlapPolicy = (typeof OVERLAP_POLICIES)[number];

/** A schedule of that name exists already: nothing was changed. */
export class ScheduleExistsError extends KybernateError {
  readonly code = 'SCHEDULE_EXISTS' as const;
  constructor(readonly schedule: string) {
    super(`preemption schedule ${schedule} exists (delete it first, or pick another name)`);
    this.name = 'ScheduleExistsError';
  }
}

/** What `kybernate preempt schedule create` asks for, as typed (strings from the command line, or numbers). */
export interface PreemptionScheduleRequest {
  name: string;
  cron: string;
  belowPriority?: string | number;
  max?: string | number;
  zone?: string;
  overlap?: string;
}

/** A request checked whole, each problem naming its flag, before anything is created. */
export interface PreemptionSchedule {
  name: string;
  cron: string;
  overlap: OverlapPolicy;
  sweep: SweepInput;
}

/** A preemption schedule as list and describe show it. */
export interface PreemptionScheduleInfo {
  name: string;
  scheduleId: string;
  cron: string | null;
  sweep: SweepInput | null;
  overlap: string | null;
  paused: boolean;
  note: string | null;
  /** ISO times. */
  nextRunAt: string[];
  /** The newest sweeps it started, oldest first. */
  recent: { scheduledAt: string; takenAt: string; workflowId: string }[];
  /** Only from describe. */
  actionsTaken?: number;
  skippedOverlap?: number;
  running?: string[];
  /** The newest sweep's status (describe only): what it did and why; null when there is none or it cannot be had. */
  lastSweep?: SweepStatus | null;
}

/** The memo a preemption schedule carries: what was asked, as given (Temporal keeps a cron only as calendars). */
interface ScheduleMemo {
  kybernate: 'preemption-schedule';
  cron: string;
  sweep: SweepInput;
}

function whole(flag: string, v: string | number | undefined, min: number, max: number): number | undefined {
  if (v === undefined) return undefined;
  const n = typeof v === 'number' ? v : /^[0-9]+$/.test(v.trim()) ? Number(v.trim()) : NaN;
  if (!Number.isInteger(n) || n < min || n > max)
    throw new InvalidInputError(flag, `must be a whole number from ${min} to ${max} (got '${String(v)}')`);
  return n;
}

/** Checks every flag of a create (naming it) before anything is sent. */
export function parsePreemptionSchedule(r: PreemptionScheduleRequest): PreemptionSchedule {
  const name = assertSafeId('name', r.name);
  if (typeof r.cron !== 'string') throw new InvalidInputError('--cron', 'is required');
  const cp = cronProblem(r.cron);
  if (cp) throw new InvalidInputError('--cron', cp);
  const belowPriority = whole('--below-priority', r.belowPriority, MIN_SWEEP_PRIORITY, MAX_SWEEP_PRIORITY);
  const max = whole('--max', r.max, 1, MAX_SWEEP_MAX) ?? DEFAULT_SWEEP_MAX;
  if (r.zone !== undefined) assertSafeId('--zone', r.zone);
  const overlap = (r.overlap ?? 'SKIP').toUpperCase();
  if (!(OVERLAP_POLICIES as readonly string[]).includes(overlap))
    throw new InvalidInputError('--overlap', `must be one of ${OVERLAP_POLICIES.join(', ')} (got '${r.overlap}')`);
  return {
    name,
    cron: r.cron.trim(),
    overlap: overlap as OverlapPolicy,
    sweep: {
      schedule: name,
      max,
      ...(belowPriority !== undefined ? { belowPriority } : {}),
      ...(r.zone !== undefined ? { zone: r.zone } : {}),
    },
  };
}

function memoOf(m: Record<string, unknown> | undefined): ScheduleMemo | null {
  return m?.kybernate === 'preemption-schedule' ? (m as unknown as ScheduleMemo) : null;
}

/** Temporal Schedules (`preempt/<name>`) that start preemption sweeps: create, list, describe, pause, trigger, delete. */
export class SchedulesApi {
  constructor(private readonly k: KybernateClient) {}

  private handle(name: string) {
    return this.k.client.schedule.getHandle(preemptionScheduleId(assertSafeId('name', name)));
  }

  /** A schedule call that names a missing schedule says so by name. */
  private async on<T>(name: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await this.k.withinTemporal(fn);
    } catch (e) {
      if (e instanceof ScheduleNotFoundError) throw new InvalidInputError('name', `no preemption schedule '${name}'`);
      throw e;
    }
  }

  async create(r: PreemptionScheduleRequest): Promise<PreemptionScheduleInfo> {
    const s = parsePreemptionSchedule(r);
    const memo: ScheduleMemo = { kybernate: 'preemption-schedule', cron: s.cron, sweep: s.sweep };
    const filters = [
      s.sweep.belowPriority !== undefined ? `priority below ${s.sweep.belowPriority}` : 'any non-critical job',
      s.sweep.zone ? `zone ${s.sweep.zone}` : null,
      `at most ${s.sweep.max}`,
    ]
      .filter(Boolean)
      .join(', ');
    try {
      await this.k.withinTemporal(() =>
        this.k.client.schedule.create({
          scheduleId: preemptionScheduleId(s.name),
          spec: { cronExpressions: [s.cron] },
          action: {
            type: 'startWorkflow',
            workflowType: preemptionSweep,
            workflowId: sweepWorkflowIdPrefix(s.name),
            taskQueue: CONTROL_QUEUE,
            args: [s.sweep],
            staticSummary: `Preemption sweep of schedule ${s.name}: ${filters}`,
          },
          policies: { overlap: s.overlap },
          memo: memo as unknown as Record<string, unknown>,
        }),
      );
    } catch (e) {
      if (e instanceof ScheduleAlreadyRunning) throw new ScheduleExistsError(s.name);
      throw e;
    }
    return this.describe(s.name);
  }

  /** Every preemption schedule (Temporal's schedule list: eventually consistent, a new one may take a moment). */
  async list(): Promise<PreemptionScheduleInfo[]> {
    const out: PreemptionScheduleInfo[] = [];
    await this.k.withinTemporal(async () => {
      for await (const s of this.k.client.schedule.list()) {
        if (!s.scheduleId.startsWith(PREEMPTION_SCHEDULE_PREFIX)) continue;
        const memo = memoOf(s.memo);
        out.push({
          name: s.scheduleId.slice(PREEMPTION_SCHEDULE_PREFIX.length),
          scheduleId: s.scheduleId,
          cron: memo?.cron ?? null,
          sweep: memo?.sweep ?? null,
          overlap: null,
          paused: s.state.paused,
          note: s.state.note ?? null,
          nextRunAt: s.info.nextActionTimes.map((d) => d.toISOString()),
          recent: s.info.recentActions.map((a) => ({
            scheduledAt: a.scheduledAt.toISOString(),
            takenAt: a.takenAt.toISOString(),
            workflowId: a.action.workflow.workflowId,
          })),
        });
      }
    });
    return out.sort((a, b) => a.name.localeCompare(b.name));
  }

  async describe(name: string): Promise<PreemptionScheduleInfo> {
    const d: ScheduleDescription = await this.on(name, () => this.handle(name).describe());
    const memo = memoOf(d.memo);
    const recent = d.info.recentActions.map((a) => ({
      scheduledAt: a.scheduledAt.toISOString(),
      takenAt: a.takenAt.toISOString(),
      workflowId: a.action.workflow.workflowId,
    }));
    const newest = recent.at(-1);
    return {
      name,
      scheduleId: d.scheduleId,
      cron: memo?.cron ?? null,
      sweep: memo?.sweep ?? null,
      overlap: d.policies.overlap ?? null,
      paused: d.state.paused,
      note: d.state.note ?? null,
      nextRunAt: d.info.nextActionTimes.map((t) => t.toISOString()),
      recent,
      actionsTaken: d.info.numActionsTaken,
      skippedOverlap: d.info.numActionsSkippedOverlap,
      running: d.info.runningActions.map((a) => a.workflow.workflowId),
      lastSweep: newest ? await this.sweepStatus(newest.workflowId).catch(() => null) : null,
    };
  }

  /** A sweep's status: its result once it completed, else its status query (bounded). */
  async sweepStatus(workflowId: string): Promise<SweepStatus> {
    const h = this.k.client.workflow.getHandle<typeof preemptionSweep>(workflowId);
    const d = await this.k
      .withinTemporal(() => h.describe())
      .catch((e: unknown) => {
        if (e instanceof WorkflowNotFoundError) throw new InvalidInputError('sweep', `no sweep '${workflowId}'`);
        throw e;
      });
    if (d.status.name === 'COMPLETED') return this.k.withinTemporal(() => h.result());
    return this.k.queryStatus<SweepStatus>(workflowId);
  }

  async pause(name: string, note?: string): Promise<PreemptionScheduleInfo> {
    await this.on(name, () => this.handle(name).pause(note ?? 'paused by kybernate preempt schedule pause'));
    return this.describe(name);
  }

  async unpause(name: string, note?: string): Promise<PreemptionScheduleInfo> {
    await this.on(name, () => this.handle(name).unpause(note ?? 'unpaused by kybernate preempt schedule unpause'));
    return this.describe(name);
  }

  /**
   * Starts a sweep now, under the schedule's own overlap policy (SKIP: not while one of its sweeps runs), not
   * Temporal's default for a trigger (ALLOW_ALL). Returns once the schedule took the trigger.
   */
  async trigger(name: string): Promise<void> {
    const d = await this.on(name, () => this.handle(name).describe());
    await this.on(name, () => this.handle(name).trigger(d.policies.overlap as ScheduleOverlapPolicy));
  }

  /** Deletes the schedule; sweeps it started run on to their end. */
  async delete(name: string): Promise<void> {
    await this.on(name, () => this.handle(name).delete());
  }
}
