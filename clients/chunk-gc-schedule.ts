import {
  type Client,
  type ScheduleDescription,
  ScheduleAlreadyRunning,
  ScheduleNotFoundError,
  WorkflowNotFoundError,
} from '@temporalio/client';
import {
  CHUNK_GC_SCHEDULE_ID,
  chunkGcInputProblem,
  type ChunkGcInput,
  type ChunkGcResult,
  SCHEDULED_CHUNK_GC_WORKFLOW_ID,
} from '../common/chunk-gc';
import { InvalidInputError } from '../common/ids';
import { CONTROL_QUEUE } from '../common/queues';
// Started by reference (see api.ts): the function's name is the workflow type.
import { scheduledChunkGc } from '../workflows/chunk-gc';
import type { KybernateClient } from './api';
import { formatBytes } from './bytes';
import { formatMs } from './job-format';

/** Collections list every checkpoint and chunk in the bucket: more often than this is only cost. */
export const MIN_CHUNK_GC_EVERY_MS = 60_000;

/** The chunk-gc schedule as `kybernate gc-schedule show` prints it. */
export interface ChunkGcScheduleInfo {
  scheduleId: string;
  everyMs: number | null;
  collection: ChunkGcInput | null;
  paused: boolean;
  /** ISO times. */
  nextRunAt: string[];
  /** The newest collections it started, oldest first. */
  recent: { scheduledAt: string; workflowId: string }[];
  running: string[];
  /** The newest collection's workflow status (RUNNING, COMPLETED, FAILED...); null when there is none or Temporal no longer has it. */
  lastStatus: string | null;
  /** Its result once it completed; null otherwise. */
  lastResult: ChunkGcResult | null;
}

/** Where a schedule's values came from, for refusals to name: the CLI's flags, or the control worker's variables. */
export interface ChunkGcScheduleFields {
  every: string;
  minAge: string;
  /** The word that turns the schedule off, where the source has one. */
  off?: string;
}

const CLI_FIELDS: ChunkGcScheduleFields = { every: '--every', minAge: '--min-age' };

/**
 * Refuses (naming the flag, or the variable) what should not be sent as the chunk-gc schedule; `given` is the
 * interval as the operator wrote it.
 */
export function checkChunkGcSchedule(
  everyMs: number,
  input: ChunkGcInput,
  fields: ChunkGcScheduleFields = CLI_FIELDS,
  given = `${everyMs} ms`,
): void {
  if (!Number.isInteger(everyMs) || everyMs < MIN_CHUNK_GC_EVERY_MS)
    throw new InvalidInputError(
      fields.every,
      `must be at least 1m${fields.off ? `, or '${fields.off}'` : ''}: each collection lists the whole bucket (got ${given})`,
    );
  const p = chunkGcInputProblem(input);
  if (p) throw new InvalidInputError(fields.minAge, p);
}

/**
 * Creates the schedule `chunk-gc` (every `everyMs`, each firing collecting with `input`), or, when there is one,
 * replaces its interval and collection (its pause state is kept) or keeps it as it is: what the control worker
 * does with its default, which must never undo an operator's `gc-schedule set`. Says which it did.
 */
export async function putChunkGcSchedule(
  client: Client,
  everyMs: number,
  input: ChunkGcInput,
  existing: 'replace' | 'keep',
): Promise<'created' | 'updated' | 'kept'> {
  const spec = { intervals: [{ every: everyMs }] };
  const action = {
    type: 'startWorkflow' as const,
    workflowType: scheduledChunkGc,
    workflowId: SCHEDULED_CHUNK_GC_WORKFLOW_ID,
    taskQueue: CONTROL_QUEUE,
    args: [input] as [ChunkGcInput],
    staticSummary: 'Scheduled collection of unreferenced chunks',
  };
  try {
    await client.schedule.create({
      scheduleId: CHUNK_GC_SCHEDULE_ID,
      spec,
      action,
      // One collection at a time; a slow one delays the next instead of queueing more.
      policies: { overlap: 'SKIP' },
    });
    return 'created';
  } catch (e) {
    if (!(e instanceof ScheduleAlreadyRunning)) throw e;
  }
  if (existing === 'keep') return 'kept';
  await client.schedule.getHandle(CHUNK_GC_SCHEDULE_ID).update((prev) => ({ ...prev, spec, action }));
  return 'updated';
}

/**
 * The Temporal Schedule `chunk-gc` that starts a collection of unreferenced chunks at a fixed interval (workflow
 * scheduledChunkGc; it runs the collection as chunk-gc, so it never overlaps `kybernate gc`). Without it,
 * chunks that retention and deleted checkpoints leave unnamed stay in S3 until someone runs `kybernate gc`.
 */
export class ChunkGcScheduleApi {
  constructor(private readonly k: KybernateClient) {}

  private handle() {
    return this.k.client.schedule.getHandle(CHUNK_GC_SCHEDULE_ID);
  }

  /** Creates the schedule, or replaces the interval and collection of the one there (its pause state is kept). */
  async set(everyMs: number, input: ChunkGcInput): Promise<ChunkGcScheduleInfo> {
    checkChunkGcSchedule(everyMs, input);
    await this.k.withinTemporal(() => putChunkGcSchedule(this.k.client, everyMs, input, 'replace'));
    return (await this.show())!;
  }

  /** The schedule, or null when there is none. */
  async show(): Promise<ChunkGcScheduleInfo | null> {
    let d: ScheduleDescription;
    try {
      d = await this.k.withinTemporal(() => this.handle().describe());
    } catch (e) {
      if (e instanceof ScheduleNotFoundError) return null;
      throw e;
    }
    const recent = d.info.recentActions.map((a) => ({
      scheduledAt: a.scheduledAt.toISOString(),
      workflowId: a.action.workflow.workflowId,
    }));
    const newest = recent.at(-1);
    const action = d.action.type === 'startWorkflow' ? d.action : null;
    return {
      scheduleId: d.scheduleId,
      everyMs: d.spec.intervals?.[0]?.every ?? null,
      collection: (action?.args?.[0] as ChunkGcInput | undefined) ?? null,
      paused: d.state.paused,
      nextRunAt: d.info.nextActionTimes.map((t) => t.toISOString()),
      recent,
      running: d.info.runningActions.map((a) => a.workflow.workflowId),
      ...(newest ? await this.outcome(newest.workflowId) : { lastStatus: null, lastResult: null }),
    };
  }

  /** A collection's status, and its result once it completed; nulls when Temporal no longer has it. */
  private async outcome(workflowId: string): Promise<{ lastStatus: string | null; lastResult: ChunkGcResult | null }> {
    const h = this.k.client.workflow.getHandle<typeof scheduledChunkGc>(workflowId);
    try {
      const status = (await this.k.withinTemporal(() => h.describe())).status.name;
      return {
        lastStatus: status,
        lastResult: status === 'COMPLETED' ? await this.k.withinTemporal(() => h.result()) : null,
      };
    } catch (e) {
      if (e instanceof WorkflowNotFoundError) return { lastStatus: null, lastResult: null };
      throw e;
    }
  }

  /**
   * Starts a collection now, under the schedule's own overlap policy (SKIP: not while one of its collections runs),
   * not Temporal's default for a trigger (ALLOW_ALL). False when there is no schedule.
   */
  async trigger(): Promise<boolean> {
    try {
      await this.k.withinTemporal(() => this.handle().trigger('SKIP'));
      return true;
    } catch (e) {
      if (e instanceof ScheduleNotFoundError) return false;
      throw e;
    }
  }

  /** Deletes the schedule (a collection under way runs to its end); false when there was none. */
  async delete(): Promise<boolean> {
    try {
      await this.k.withinTemporal(() => this.handle().delete());
      return true;
    } catch (e) {
      if (e instanceof ScheduleNotFoundError) return false;
      throw e;
    }
  }
}

/** `gc-schedule set|show`: the schedule in a few lines. */
export function chunkGcScheduleText(s: ChunkGcScheduleInfo | null): string {
  if (!s) return "no chunk-gc schedule: chunks are collected only by 'kybernate gc'";
  const last = s.lastResult;
  const newest = s.recent.at(-1);
  return [
    `chunk-gc schedule: every ${s.everyMs === null ? '?' : formatMs(s.everyMs)}, deleting unnamed chunks older than ${s.collection ? formatMs(s.collection.minAgeMs) : '?'}${s.paused ? ' (paused)' : ''}`,
    `next run   ${s.nextRunAt[0] ?? '-'}`,
    `last run   ${
      !newest
        ? 'none yet'
        : s.running.includes(newest.workflowId)
          ? `${newest.scheduledAt}: running (${newest.workflowId})`
          : last
            ? `${newest.scheduledAt}: ${last.outcome}${last.reason ? ` (${last.reason})` : ''}, ${last.deleted} chunks deleted (${formatBytes(last.deletedBytes)}), ${last.referenced} named`
            : `${newest.scheduledAt}: ${s.lastStatus ?? 'no longer known'} (${newest.workflowId})`
    }`,
  ].join('\n');
}
