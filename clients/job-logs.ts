import { ApplicationFailure } from '@temporalio/common';
import { parseCriLog } from '../common/cri-log';
import { describeFailureChain, UnavailableError } from './errors';
import { LOG_READ_TIMEOUT_MS } from './jobs';
import { ErrorType } from '../common/errors';
import { InvalidInputError, printable } from '../common/ids';
import {
  type JobState,
  type JobStatus,
  type ReadRunLogInput,
  type ReadRunLogResult,
  type RunLogLine,
  type RunRecord,
  TERMINAL_JOB_STATES,
} from '../common/job';

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

/** Where logs come from: JobsApi (the job's status, a read on the run's node, the archived log in S3). */
export interface LogSource {
  status(jobId: string): Promise<JobStatus>;
  startNodeLogRead(
    node: string,
    input: ReadRunLogInput,
    follow: boolean,
  ): Promise<{ result(): Promise<ReadRunLogResult>; terminate(reason?: string): Promise<unknown> }>;
  readArchivedLog(key: string, offset: number): Promise<Buffer>;
}

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
      (l.stream === 'stderr' ? process.stderr : process.stdout).write(
        formatLogLine(l, timestamps, continuing[l.stream]),
      );
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
 * Runs are followed by their number, not their place in the list.
 */
export async function showLogs(
  jobs: LogSource,
  jobId: string,
  o: LogOptions,
  out: LogSink,
  pollMs = POLL_MS,
): Promise<void> {
  let status = await jobs.status(jobId);
  const first = status.runs[status.runs.length - (o.previous ? 2 : 1)];
  if (o.previous && !first)
    throw new InvalidInputError('previous', `job '${jobId}' has no previous run (it has ${status.runs.length})`);
  if (!first && !o.follow) {
    out.note(`job ${jobId} has no run yet (${status.state})`);
    return;
  }
  const follow = Boolean(o.follow) && !o.previous;
  let current: number | null = first ? first.run : null;
  let offset = 0;
  for (;;) {
    const run = current === null ? status.runs[0] : status.runs.find((r) => r.run === current);
    if (run) {
      current = run.run;
      const r = await readRun(jobs, jobId, run, offset, follow, status, out, pollMs);
      offset = r.offset;
      if (!follow) return;
      if (r.complete) {
        const next = status.runs.find((x) => x.run > run.run);
        if (next) {
          out.note(
            `--- run ${next.run} on ${next.node}${next.fromCheckpoint ? ` (resumed from checkpoint ${next.fromCheckpoint})` : ''} ---`,
          );
          // A run resumed from a checkpoint writes on in the log file its checkpoint carried (CRIU restores open
          // files by path): the bytes before the offset were shown already.
          if (!(next.fromCheckpoint && next.logFile !== null && next.logFile === run.logFile)) offset = 0;
          current = next.run;
          continue;
        }
        if (FOLLOW_ENDS.includes(status.state)) return endNote(status, out);
      }
    } else if (FOLLOW_ENDS.includes(status.state)) {
      return endNote(status, out);
    }
    await sleep(pollMs);
    status = await jobs.status(jobId);
  }
}

function endNote(status: JobStatus, out: LogSink): void {
  out.note(`job ${status.jobId} is ${status.state}${status.reason ? `: ${status.reason}` : ''}`);
}

/** Reads a run's log from `offset` as far as it goes now, printing each line. */
async function readRun(
  jobs: LogSource,
  jobId: string,
  run: RunRecord,
  offset: number,
  follow: boolean,
  status: JobStatus,
  out: LogSink,
  pollMs: number,
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
    let result: ReadRunLogResult | 'archived' | 'moved-on';
    try {
      result = follow ? await awaitOrMovedOn(h, run, () => jobs.status(jobId), pollMs) : await h.result();
    } catch (e) {
      if (isInvalidInput(e)) throw e;
      if (!follow)
        throw new UnavailableError(
          `the agent of ${run.node}`,
          `task queue node/${run.node}`,
          `did not answer a read of job ${jobId}'s log within ${LOG_READ_TIMEOUT_MS / 1000}s: ${describeFailureChain(e)}`,
        );
      await sleep(pollMs); // the agent stayed away past the read's bounds: ask again from the same offset
      return { offset, complete: false };
    }
    if (result === 'archived') return { offset, complete: false }; // read on from S3, from the same offset
    if (result === 'moved-on') {
      out.note(
        `run ${run.run}'s log could not be read on from byte ${offset}: ${run.node} does not answer, and the job went on without archiving it`,
      );
      return { offset, complete: true };
    }
    for (const l of result.lines) out.line(l);
    const progressed = result.nextOffset > offset;
    offset = result.nextOffset;
    if (!progressed || offset >= result.size) break;
  }
  // Ended but not archived (yet, or the archive failed): complete once nothing more can come from this run.
  const newer = status.runs.some((r) => r.run > run.run);
  return { offset, complete: run.endedAt !== null && (newer || FOLLOW_ENDS.includes(status.state)) };
}

/**
 * The read's result, or what made it moot while it waited (its node's agent away): the run was archived (the
 * rest is in S3, from the same offset), or the job went on to a later run or ended without archiving it. A
 * moot read is terminated.
 */
async function awaitOrMovedOn(
  h: { result(): Promise<ReadRunLogResult>; terminate(reason?: string): Promise<unknown> },
  run: RunRecord,
  refresh: () => Promise<JobStatus>,
  pollMs: number,
): Promise<ReadRunLogResult | 'archived' | 'moved-on'> {
  const result = h.result();
  for (;;) {
    const done = await Promise.race([
      result.then(
        () => true,
        () => true,
      ),
      sleep(5 * pollMs).then(() => false),
    ]);
    if (done) return result;
    const now = await refresh().catch(() => null);
    if (!now) continue;
    const same = now.runs.find((r) => r.run === run.run);
    const moot = same?.logObject
      ? 'archived'
      : now.runs.some((r) => r.run > run.run) || FOLLOW_ENDS.includes(now.state)
        ? 'moved-on'
        : null;
    if (moot) {
      result.catch(() => undefined);
      await h
        .terminate(
          `the read is moot: the run was ${moot === 'archived' ? 'archived' : 'left behind'} while its node did not answer`,
        )
        .catch(() => undefined);
      return moot;
    }
  }
}

function isInvalidInput(e: unknown): boolean {
  for (let cur: unknown = e; cur instanceof Error; cur = cur.cause) {
    if (cur instanceof ApplicationFailure && cur.type === ErrorType.InvalidInput) return true;
  }
  return false;
}
