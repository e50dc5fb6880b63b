import { ApplicationFailure } from '@temporalio/common';
import { parseCriLog } from '../common/cri-log';
import { ErrorType } from '../common/errors';
import { InvalidInputError, printable } from '../common/ids';
import { type JobState, type JobStatus, type RunLogLine, type RunRecord, TERMINAL_JOB_STATES } from '../common/job';
import type { JobsApi } from './jobs';

export interface LogOptions {
  /** The run before the current one. */
  previous?: boolean;
  /** Keep reading while the job runs, run after run, until the job ends. */
  follow?: boolean;
  timestamps?: boolean;
}

export interface LogSink {
  line(l: RunLogLine): void;
  /** A word from the CLI itself (a run ended, the job is quarantined), not a log line. */
  note(text: string): void;
}

/**
 * States after which `logs -f` stops: the terminal ones, and a quarantine (nothing runs until an operator
 * releases it; following on would hang).
 */
const FOLLOW_ENDS: readonly JobState[] = [...TERMINAL_JOB_STATES, 'Quarantined'];

const POLL_MS = 1000;

/** A log line as the terminal shows it: its text with control characters escaped (tabs kept), time optional. */
export function formatLogLine(l: RunLogLine, timestamps: boolean, continuing: boolean): string {
  const text = l.text.split('\t').map(printable).join('\t');
  return `${timestamps && !continuing && l.time ? `${l.time} ` : ''}${text}${l.partial ? '' : '\n'}`;
}

/** Writes lines to stdout / stderr by stream, in file order; a partial line's continuation is not re-stamped. */
export function consoleSink(timestamps: boolean): LogSink {
  const continuing = { stdout: false, stderr: false };
  return {
    line(l) {
      (l.stream === 'stderr' ? process.stderr : process.stdout).write(formatLogLine(l, timestamps, continuing[l.stream]));
      continuing[l.stream] = l.partial;
    },
    note(text) {
      process.stderr.write(`${printable(text)}\n`);
    },
  };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** What one pass over a run read: where to go on from, and whether its log is complete (nothing more will come). */
interface RunRead {
  offset: number;
  complete: boolean;
}

/**
 * `kybernate logs <job>`: the current run's log (or the previous run's), then with `follow` every later byte,
 * run after run, until the job ends. A running run's log is read on its node (through readJobLog), an ended
 * run's from S3 once archived; both are the same CRI file, so a byte offset carries over from one to the other
 * and no line is lost or doubled, also across an agent restart (the read simply waits for the agent).
 */
export async function showLogs(jobs: JobsApi, jobId: string, o: LogOptions, out: LogSink): Promise<void> {
  let status = await jobs.status(jobId);
  let idx = status.runs.length - (o.previous ? 2 : 1);
  if (o.previous && idx < 0) throw new InvalidInputError('previous', `job '${jobId}' has no previous run (it has ${status.runs.length})`);
  const follow = Boolean(o.follow) && !o.previous;
  let offset = 0;
  for (;;) {
    const run = idx >= 0 ? status.runs[idx] : undefined;
    if (run) {
      const r = await readRun(jobs, jobId, run, offset, follow, () => jobs.status(jobId), status, out);
      offset = r.offset;
      if (!follow) return;
      if (r.complete) {
        const next = status.runs[idx + 1];
        if (next) {
          out.note(`--- run ${next.run} on ${next.node}${next.fromCheckpoint ? ` (resumed from checkpoint ${next.fromCheckpoint})` : ''} ---`);
          // A run resumed from a checkpoint writes on in the log file its checkpoint carried (CRIU restores open
          // files by path): the bytes before the offset were shown already.
          if (!(next.fromCheckpoint && next.logFile !== null && next.logFile === run.logFile)) offset = 0;
          idx++;
          continue;
        }
        if (FOLLOW_ENDS.includes(status.state)) return endNote(status, out);
      }
    } else if (!follow) {
      out.note(`job ${jobId} has no run yet (${status.state})`);
      return;
    } else if (FOLLOW_ENDS.includes(status.state)) {
      return endNote(status, out);
    } else if (status.runs.length > 0) {
      idx = 0;
      continue;
    }
    await sleep(POLL_MS);
    status = await jobs.status(jobId);
  }
}

function endNote(status: JobStatus, out: LogSink): void {
  out.note(`job ${status.jobId} is ${status.state}${status.reason ? `: ${status.reason}` : ''}`);
}

/** Reads a run's log from `offset` as far as it goes now, printing each line. */
async function readRun(
  jobs: JobsApi, jobId: string, run: RunRecord, offset: number, follow: boolean, refresh: () => Promise<JobStatus>, status: JobStatus, out: LogSink,
): Promise<RunRead> {
  if (run.logObject) {
    const buf = await jobs.readArchivedLog(run.logObject, offset);
    const { lines, consumed } = parseCriLog(buf, true);
    for (const l of lines) out.line(l);
    return { offset: offset + consumed, complete: true };
  }
  if (!run.logFile) return { offset, complete: run.endedAt !== null }; // never started (StartFailure): no log
  // On its node: whole lines, chunk after chunk, until the end of the file as it is now.
  for (;;) {
    const h = await jobs.startNodeLogRead(run.node, { jobId, logFile: run.logFile, offset }, follow);
    let result;
    try {
      result = follow ? await awaitOrMovedOn(h, run, refresh) : await h.result();
    } catch (e) {
      if (!follow || isInvalidInput(e)) throw e;
      await sleep(POLL_MS); // the agent stayed away past the read's bounds: ask again from the same offset
      return { offset, complete: false };
    }
    if (result === null) return { offset, complete: false }; // archived meanwhile: read on from S3
    for (const l of result.lines) out.line(l);
    const progressed = result.nextOffset > offset;
    offset = result.nextOffset;
    if (!progressed || offset >= result.size) break;
  }
  // Ended but not archived (yet, or the archive failed): complete once nothing more can come from this run.
  const ended = run.endedAt !== null && (status.runs[status.runs.length - 1] !== run || FOLLOW_ENDS.includes(status.state));
  return { offset, complete: ended };
}

/**
 * The read's result; or null, after terminating the read, when the run was archived while the read waited
 * (its agent down): the rest is then in S3, from the same offset.
 */
async function awaitOrMovedOn<T>(h: { result(): Promise<T>; terminate(reason?: string): Promise<unknown> }, run: RunRecord, refresh: () => Promise<JobStatus>): Promise<T | null> {
  const result = h.result();
  for (;;) {
    const done = await Promise.race([result.then(() => true, () => true), sleep(5000).then(() => false)]);
    if (done) return result;
    const now = await refresh().catch(() => null);
    const same = now?.runs.find((r) => r.run === run.run);
    if (same?.logObject) {
      run.logObject = same.logObject;
      await h.terminate('the run was archived while its node did not answer').catch(() => undefined);
      result.catch(() => undefined);
      return null;
    }
  }
}

function isInvalidInput(e: unknown): boolean {
  for (let cur: unknown = e; cur instanceof Error; cur = cur.cause) {
    if (cur instanceof ApplicationFailure && cur.type === ErrorType.InvalidInput) return true;
  }
  return false;
}
