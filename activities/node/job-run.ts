import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { ApplicationFailure, Context } from '@temporalio/activity';
import { ErrorType } from '../../common/errors';
import type {
  JobLimits,
  ReadRunLogInput,
  ReadRunLogResult,
  RunExit,
  RunLogLine,
  RunRecord,
  StartRunInput,
  StartRunResult,
} from '../../common/job';
import type { ProcessIdentity } from '../../common/journal';
import { makeS3Client, s3ErrorKind } from '../s3-client';
import {
  attachToJobCgroup,
  createJobCgroup,
  jobCgroupDirs,
  jobCgroupOomKilled,
  kybernateCgroupsOf,
  removeJobCgroup,
} from './cgroups';
import { type NodeContext, safeId, workloadDir } from './context';
import {
  checkCommand,
  checkCwd,
  dropPrivilegesPrefix,
  initPrefix,
  otherUserCheckpointBlocker,
  resolveExecutable,
  resolveRunAs,
  workloadEnv,
} from './launch';
import { readPidFile, writePidFile } from './pid-file';
import {
  isSameProcess,
  namespaceInit,
  processAlive,
  processIdentity,
  processTree,
  runningWorkload,
  START_SETTLE_MS,
  starting,
} from './process';
import { registerWorkloadProcess } from './process-registry';
import { heartbeat } from './run-tool';
import { recordVram } from './vram';

/**
 * The node side of a job's runs. Each run lives in <dataDir>/workloads/<job>/runs/<run>/: `log` (CRI format,
 * written by the shim), `exit.json` (the shim's exit record), `run.json` (what startRun returned, so a retried
 * start answers the same) and `shim.err` (what the init and the shim themselves print: a cgroup they could not
 * join). The run's process is the init (tini) of its PID namespace; under it the shim, under that the command.
 */

export const DEFAULT_LOG_READ_BYTES = 256 * 1024;
const AWAIT_POLL_MS = 500;

function invalid(field: string, message: string): ApplicationFailure {
  return ApplicationFailure.nonRetryable(`${field}: ${message}`, ErrorType.InvalidInput, { field });
}

function runNumber(run: unknown): number {
  if (typeof run !== 'number' || !Number.isInteger(run) || run < 1)
    throw invalid('run', `must be a positive integer (got ${String(run)})`);
  return run;
}

export const runDir = (ctx: NodeContext, jobId: string, run: number): string =>
  path.join(workloadDir(ctx, jobId), 'runs', String(runNumber(run)));

/**
 * A run's log or exit file, checked by shape rather than by this node's data dir: a run resumed on another
 * node keeps writing where it was started (CRIU reopens files by path), under the first node's data dir.
 */
export function runFile(field: string, file: unknown, jobId: string, name: 'log' | 'exit.json'): string {
  const id = safeId('jobId', jobId);
  if (typeof file !== 'string' || !path.isAbsolute(file) || path.normalize(file) !== file || file.includes('\0')) {
    throw invalid(field, `must be an absolute normalized path (got ${JSON.stringify(file)})`);
  }
  const parts = file.split('/');
  const n = parts.length;
  if (
    n < 6 ||
    parts[n - 1] !== name ||
    !/^[0-9]+$/.test(parts[n - 2]) ||
    parts[n - 3] !== 'runs' ||
    parts[n - 4] !== id ||
    parts[n - 5] !== 'workloads'
  ) {
    throw invalid(field, `must name .../workloads/${id}/runs/<run>/${name} (got ${file})`);
  }
  return file;
}

function checkLimits(limits: unknown): JobLimits {
  if (limits === undefined || limits === null) return {};
  if (typeof limits !== 'object') throw invalid('limits', 'must be an object');
  const l = limits as Record<string, unknown>;
  const positive = (field: 'cpu' | 'memoryBytes' | 'pids', integer: boolean): number | undefined => {
    const v = l[field];
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0 || (integer && !Number.isInteger(v))) {
      throw invalid(`limits.${field}`, `must be a positive ${integer ? 'integer' : 'number'} (got ${String(v)})`);
    }
    return v;
  };
  const out: JobLimits = {};
  const cpu = positive('cpu', false);
  const memoryBytes = positive('memoryBytes', true);
  const pids = positive('pids', true);
  if (cpu !== undefined) out.cpu = cpu;
  if (memoryBytes !== undefined) out.memoryBytes = memoryBytes;
  if (pids !== undefined) out.pids = pids;
  return out;
}

function readText(file: string, max = 4000): string {
  try {
    const t = fs.readFileSync(file, 'utf8');
    return t.length > max ? t.slice(-max) : t;
  } catch {
    return '';
  }
}

/**
 * Starts a run: checks everything that can be checked (a command not found or not executable is StartFailure
 * before anything is spawned), makes the job's cgroup, and starts
 * `unshare --pid --fork setsid <tini> -g -- <shim> ... -- [setpriv ...] <exe> <args>` detached, so it outlives
 * the agent. A run that exits within the settle window still ran when the shim recorded its exit (awaitRunExit
 * reports it); one that left no record never started (StartFailure). Idempotent per run: a retry of a start
 * that got through answers the same.
 */
export async function startRun(ctx: NodeContext, input: StartRunInput): Promise<StartRunResult> {
  const jobId = safeId('jobId', input.jobId);
  const run = runNumber(input.run);
  checkCommand(input.command);
  const limits = checkLimits(input.limits);
  if (
    input.vramBytes !== undefined &&
    (typeof input.vramBytes !== 'number' || !Number.isInteger(input.vramBytes) || input.vramBytes < 0)
  ) {
    throw invalid('vramBytes', `must be a non-negative integer (got ${String(input.vramBytes)})`);
  }
  const runAs = resolveRunAs(input.user);
  const cwd = input.cwd === undefined ? null : checkCwd(input.cwd);
  const env = workloadEnv({
    jobId,
    jobEnv: input.env,
    parent: process.env,
    home: runAs?.home ?? process.env.HOME ?? '/',
  });
  const dir = runDir(ctx, jobId, run);
  const logFile = path.join(dir, 'log');
  const exitFile = path.join(dir, 'exit.json');
  const recordFile = path.join(dir, 'run.json');
  if (starting.has(jobId))
    throw ApplicationFailure.nonRetryable(
      `job ${jobId} is being started on node ${ctx.node} right now`,
      ErrorType.JobAlreadyRunning,
    );
  starting.add(jobId);
  try {
    const earlier = readRunRecord(recordFile);
    if (earlier && (isSameProcess(earlier.process) || fs.existsSync(exitFile))) return earlier;
    const running = runningWorkload(ctx, jobId);
    if (running) {
      throw ApplicationFailure.nonRetryable(
        `job ${jobId} is already running on node ${ctx.node} as pid ${running.pid}; stop it or use another job id`,
        ErrorType.JobAlreadyRunning,
      );
    }
    // A start whose agent died before it wrote the pid file left a run nobody tracks: its tasks are still in the
    // job's cgroup. Never a second copy beside it; stopRun (process null) clears it.
    const untracked = [...jobCgroupDirs(ctx, jobId).values()].flatMap(cgroupProcs);
    if (untracked.length > 0) {
      throw ApplicationFailure.nonRetryable(
        `job ${jobId} has processes in its cgroup on node ${ctx.node} (pids ${untracked.slice(0, 10).join(' ')}); stop it first`,
        ErrorType.JobAlreadyRunning,
      );
    }
    const workDir = cwd ?? workloadDir(ctx, jobId);
    fs.mkdirSync(dir, { recursive: true });
    const exe = resolveExecutable(input.command[0], workDir, env.PATH, runAs);
    if (ctx.initBin !== null) resolveExecutable(ctx.initBin, '/', '', null);
    // A run number used before (a start that failed) starts clean: its old exit record must not be read as this one's.
    for (const f of [exitFile, `${exitFile}.tmp`, logFile]) fs.rmSync(f, { force: true });
    const cgroup = createJobCgroup(ctx, jobId, limits);
    if (runAs) fs.chownSync(workloadDir(ctx, jobId), runAs.uid, runAs.gid);
    const errFile = path.join(dir, 'shim.err');
    fs.writeFileSync(errFile, '');
    const dropPrivileges = dropPrivilegesPrefix(runAs);
    const init = initPrefix(ctx.initBin);
    const shim = [
      ctx.shimBin,
      '--log',
      logFile,
      '--exit',
      exitFile,
      ...cgroup.dirs.flatMap((d) => ['--cgroup', d]),
      '--',
    ];
    // The init and the shim stay root (the shim writes cgroup.procs); setpriv drops privileges in the shim's
    // child just before it becomes the command.
    // shim.err is opened inside the namespace, by its pid 1 before it becomes setsid and tini: unshare, outside
    // the tree, must not share it (it writes there when its child is killed, and a file that changed size after
    // a dump fails the restore).
    const startedAt = new Date().toISOString();
    const child = spawn(
      'unshare',
      [
        '--pid',
        '--fork',
        '/bin/sh',
        '-c',
        'exec >>"$0" 2>&1; exec setsid "$@"',
        errFile,
        ...init,
        ...shim,
        ...dropPrivileges,
        exe,
        ...input.command.slice(1),
      ],
      {
        detached: true,
        stdio: 'ignore',
        cwd: workDir,
        env,
      },
    );
    child.unref();
    let exited: string | null = null;
    child.on('exit', (code, signal) => (exited = signal ? `killed by ${signal}` : `exited with status ${code}`));
    child.on('error', (e) => (exited = `could not be spawned: ${e.message}`));
    const failed = async (why: string): Promise<ApplicationFailure> => {
      // Nothing is left running after a failed start.
      for (const p of [child.pid]) {
        try {
          if (p !== undefined && processAlive(p)) process.kill(p, 'SIGKILL');
        } catch {
          /* gone meanwhile */
        }
      }
      await removeJobCgroup(ctx, jobId).catch(() => undefined);
      const out = [readText(errFile).trim(), readText(logFile).trim()].filter(Boolean).join('\n');
      return ApplicationFailure.nonRetryable(
        `${input.command[0]} (${exe}) ${why}${out ? `; its output:\n${out}` : ''}`,
        ErrorType.StartFailure,
      );
    };
    if (child.pid === undefined) {
      await new Promise((r) => setImmediate(r));
      throw await failed(exited ?? 'could not be spawned');
    }
    const initPid = await namespaceInit(child.pid, () => exited);
    let id = typeof initPid === 'number' ? processIdentity(initPid) : null;
    for (let waited = 0; waited < START_SETTLE_MS && id !== null && isSameProcess(id); waited += 50)
      await new Promise((r) => setTimeout(r, 50));
    if (id === null || !isSameProcess(id)) {
      // Gone already. The shim writes its record before it exits, so a record means the command ran and exited.
      if (!fs.existsSync(exitFile))
        throw await failed(
          `${typeof initPid === 'string' ? initPid : (exited ?? 'exited')} right after it started, leaving no exit status`,
        );
      // Start time 0 names no live process: awaitRunExit finds it gone and reads the record.
      id ??= { pid: typeof initPid === 'number' ? initPid : child.pid, startTime: 0 };
    }
    const result: StartRunResult = { process: id, logFile, exitFile, startedAt };
    writePidFile(path.join(workloadDir(ctx, jobId), 'pid'), id);
    fs.writeFileSync(`${recordFile}.tmp`, JSON.stringify(result));
    fs.renameSync(`${recordFile}.tmp`, recordFile);
    registerWorkloadProcess(ctx, id.pid, 'started', jobId);
    if (input.vramBytes) recordVram(ctx, id.pid, input.vramBytes);
    ctx.logger.info(
      { job: jobId, run, node: ctx.node, pid: id.pid, cwd: workDir, uid: runAs?.uid, exe, cgroup: cgroup.dirs },
      'run started',
    );
    const blocker = runAs ? otherUserCheckpointBlocker() : null;
    if (blocker)
      ctx.logger.warn(
        { job: jobId, run, node: ctx.node, pid: id.pid },
        `this run cannot be checkpointed on this node: ${blocker}`,
      );
    return result;
  } finally {
    starting.delete(jobId);
  }
}

function childrenOf(pid: number): number[] {
  try {
    return fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(' ').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

function cgroupProcs(dir: string): number[] {
  try {
    return fs.readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

function readRunRecord(file: string): StartRunResult | null {
  try {
    const r = JSON.parse(fs.readFileSync(file, 'utf8')) as StartRunResult;
    return typeof r.process?.pid === 'number' && typeof r.process.startTime === 'number' ? r : null;
  } catch {
    return null;
  }
}

interface ExitRecord {
  exitCode?: number;
  signal?: string;
  signo?: number;
  endedAt?: string;
}

function readExitRecord(file: string): ExitRecord | null {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as ExitRecord;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e; // written by rename, so never half: anything else is a real fault
  }
}

function memoryLimitOf(ctx: NodeContext, jobId: string): string {
  const dirs = jobCgroupDirs(ctx, jobId);
  const file = dirs.has('memory')
    ? path.join(dirs.get('memory')!, 'memory.limit_in_bytes')
    : dirs.has('unified')
      ? path.join(dirs.get('unified')!, 'memory.max')
      : null;
  const v = file ? readText(file).trim() : '';
  return v ? `${v} bytes` : 'its limit';
}

/** What became of a run whose process is gone, from the shim's record and the cgroup's OOM count. */
export function runExitOf(ctx: NodeContext, jobId: string, exitFile: string): RunExit {
  const rec = readExitRecord(exitFile);
  if (!rec) {
    return {
      exitCode: null,
      signal: null,
      reason: 'LostWhileAgentDown',
      endedAt: new Date().toISOString(),
      message:
        "the run's process was gone and left no exit status; the node's agent was down or the process tree was killed",
    };
  }
  const endedAt = rec.endedAt ?? new Date().toISOString();
  const oom = (rec.signal === 'SIGKILL' || (rec.exitCode ?? 0) !== 0) && jobCgroupOomKilled(ctx, jobId);
  if (oom) {
    return {
      exitCode: rec.exitCode ?? null,
      signal: rec.signal ?? null,
      reason: 'OOMKilled',
      endedAt,
      message: `killed by the kernel's OOM killer: the run went over its memory limit (${memoryLimitOf(ctx, jobId)})`,
    };
  }
  if (rec.signal !== undefined)
    return { exitCode: null, signal: rec.signal, reason: 'Signaled', endedAt, message: `killed by ${rec.signal}` };
  const code = rec.exitCode ?? 0;
  return code === 0
    ? { exitCode: 0, signal: null, reason: 'Completed', endedAt, message: 'exited with code 0' }
    : { exitCode: code, signal: null, reason: 'Error', endedAt, message: `exited with code ${code}` };
}

function activityContext(): Context | null {
  try {
    return Context.current();
  } catch {
    return null;
  }
}

/**
 * Waits for that very run process to be gone (polling every 500 ms, heartbeating every poll), then says how the
 * run ended. Re-attaching after an agent restart is just asking again with the same identity. Cancelled: throws
 * at once (the Temporal context's sleep throws CancelledFailure).
 */
export async function awaitRunExit(
  ctx: NodeContext,
  input: { jobId: string; run: number; process: ProcessIdentity; exitFile: string },
): Promise<RunExit> {
  const jobId = safeId('jobId', input.jobId);
  runNumber(input.run);
  const exitFile = runFile('exitFile', input.exitFile, jobId, 'exit.json');
  const act = activityContext();
  while (isSameProcess(input.process)) {
    heartbeat({ pid: input.process.pid });
    if (act) await act.sleep(AWAIT_POLL_MS);
    else await new Promise((r) => setTimeout(r, AWAIT_POLL_MS));
  }
  const exit = runExitOf(ctx, jobId, exitFile);
  ctx.logger.info({ job: jobId, run: input.run, node: ctx.node, pid: input.process.pid, ...exit }, 'run ended');
  return exit;
}

/**
 * Stops a run: SIGTERM to its init (tini forwards it to the command's process group), up to graceMs, then
 * SIGKILL (the init's death takes the whole PID namespace with it); then the job's cgroup is emptied and
 * removed, which kills what escaped both. Idempotent: a run already gone answers signal null. A stop of a run
 * that is gone while another run of the job runs (per the pid file) touches nothing.
 */
export async function stopRun(
  ctx: NodeContext,
  input: { jobId: string; run: number; process: ProcessIdentity | null; graceMs: number; reason: string },
): Promise<{ signal: 'SIGTERM' | 'SIGKILL' | null; killedStragglers: number }> {
  const jobId = safeId('jobId', input.jobId);
  runNumber(input.run);
  if (typeof input.graceMs !== 'number' || !Number.isFinite(input.graceMs) || input.graceMs < 0)
    throw invalid('graceMs', `must be a non-negative number (got ${String(input.graceMs)})`);
  const live = runningWorkload(ctx, jobId);
  if (input.process && live && (live.pid !== input.process.pid || live.startTime !== input.process.startTime)) {
    // Another run of the job is the one running now: its cgroup is the job's, and not this stop's to empty.
    ctx.logger.warn(
      { job: jobId, run: input.run, node: ctx.node, pid: input.process.pid, running: live.pid, reason: input.reason },
      'run already gone; the job runs on as another process, left alone',
    );
    return { signal: null, killedStragglers: 0 };
  }
  // No process named (a start whose answer was lost): whatever of the job runs is stopped.
  const p = input.process ?? live;
  let signal: 'SIGTERM' | 'SIGKILL' | null = null;
  if (p && isSameProcess(p)) {
    const started = Date.now();
    process.kill(p.pid, 'SIGTERM');
    signal = 'SIGTERM';
    while (isSameProcess(p) && Date.now() - started < input.graceMs) {
      heartbeat();
      await new Promise((r) => setTimeout(r, 100));
    }
    if (isSameProcess(p)) {
      signal = 'SIGKILL';
      // The command's tree first, the shim spared: it records the SIGKILL and exits, and the init with it. Only
      // an init still there after that is killed itself (which takes the whole namespace, record or not).
      const shims = childrenOf(p.pid);
      for (const pid of processTree(p.pid)) {
        if (pid === p.pid || shims.includes(pid)) continue;
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone meanwhile */
        }
      }
      for (let i = 0; i < 100 && isSameProcess(p); i++) await new Promise((r) => setTimeout(r, 50));
      if (isSameProcess(p)) process.kill(p.pid, 'SIGKILL');
      for (let i = 0; i < 200 && isSameProcess(p); i++) await new Promise((r) => setTimeout(r, 50));
    }
  }
  const { killed } = await removeJobCgroup(ctx, jobId);
  const pidFile = path.join(workloadDir(ctx, jobId), 'pid');
  const rec = readPidFile(pidFile);
  if (
    rec &&
    (rec.startTime === undefined ? !processAlive(rec.pid) : !isSameProcess({ pid: rec.pid, startTime: rec.startTime }))
  )
    fs.rmSync(pidFile, { force: true });
  ctx.logger.info(
    { job: jobId, run: input.run, node: ctx.node, pid: p?.pid, signal, killedStragglers: killed, reason: input.reason },
    'run stopped',
  );
  return { signal, killedStragglers: killed };
}

/** That very process runs (same start time, not a zombie). */
export function inspectRun(input: { process: ProcessIdentity }): { running: boolean } {
  return { running: isSameProcess(input.process) };
}

/** A run resumed from a checkpoint: CRIU put its tasks back outside the job's cgroup; its limits apply again. */
export async function attachRunLimits(
  ctx: NodeContext,
  input: { jobId: string; limits: JobLimits; process: ProcessIdentity },
): Promise<{ cgroup: string[] }> {
  const jobId = safeId('jobId', input.jobId);
  const limits = checkLimits(input.limits);
  if (!isSameProcess(input.process))
    throw ApplicationFailure.nonRetryable(
      `run of job ${jobId}: pid ${input.process.pid} is no longer running`,
      ErrorType.NoSuchProcess,
    );
  const { dirs } = createJobCgroup(ctx, jobId, limits);
  if (dirs.length === 0) return { cgroup: [] };
  // Everything under the init, as at start (the shim joins the cgroup, the init stays out): the init's parent
  // after a restore is the host's init, and a zombie init left in the cgroup would keep it from being removed.
  const tree = processTree(input.process.pid).filter((p) => p !== input.process.pid);
  const before = kybernateCgroupsOf(tree).filter((d) => !dirs.includes(d));
  const cgroup = attachToJobCgroup(ctx, jobId, tree);
  // The cgroups CRIU put the tree back into (the dumping node's, by name) are left empty: removed, not left behind.
  const cleared: string[] = [];
  for (const d of before.sort((a, b) => b.length - a.length)) {
    // v1 may refuse a cgroup for a moment (EBUSY) right after its last task moved out.
    for (let i = 0; i < 40; i++) {
      try {
        fs.rmdirSync(d);
        cleared.push(d);
        break;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EBUSY' || cgroupProcs(d).length > 0) break; // in use by another task, or gone
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }
  ctx.logger.info(
    { job: jobId, node: ctx.node, pid: input.process.pid, cgroup, cleared },
    'resumed run moved into its cgroup',
  );
  return { cgroup };
}

const CRI_LINE = /^(\S+) (stdout|stderr) ([FP]) (.*)$/s;

export function parseLogLine(line: string): RunLogLine {
  const m = CRI_LINE.exec(line);
  // A line the shim did not write (never expected): kept whole rather than lost.
  if (!m) return { time: '', stream: 'stdout', partial: false, text: line };
  return { time: m[1], stream: m[2] as 'stdout' | 'stderr', partial: m[3] === 'P', text: m[4] };
}

/**
 * Whole lines of a run's log from offset, at most maxBytes of them (but always one line, so a reader makes
 * progress past a line longer than maxBytes). nextOffset is just past the last line returned: reading on from
 * it loses and doubles nothing.
 */
export function readRunLog(input: ReadRunLogInput): ReadRunLogResult {
  const logFile = runFile('logFile', input.logFile, input.jobId, 'log');
  const offset = input.offset;
  if (typeof offset !== 'number' || !Number.isInteger(offset) || offset < 0)
    throw invalid('offset', `must be a non-negative integer (got ${String(offset)})`);
  const maxBytes = input.maxBytes ?? DEFAULT_LOG_READ_BYTES;
  if (typeof maxBytes !== 'number' || !Number.isInteger(maxBytes) || maxBytes < 1 || maxBytes > 16 * 1024 * 1024)
    throw invalid('maxBytes', `must be an integer from 1 to 16 MiB (got ${String(maxBytes)})`);
  let fd: number;
  try {
    fd = fs.openSync(logFile, 'r');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { lines: [], nextOffset: 0, size: 0 };
    throw e;
  }
  try {
    const size = fs.fstatSync(fd).size;
    if (offset >= size) return { lines: [], nextOffset: offset, size };
    let want = Math.min(maxBytes, size - offset);
    let buf = Buffer.alloc(want);
    let got = fs.readSync(fd, buf, 0, want, offset);
    let end = buf.subarray(0, got).lastIndexOf(0x0a);
    // One line longer than maxBytes: read on to its end, and return that line alone.
    while (end < 0 && offset + got < size) {
      want = Math.min(want * 2, size - offset);
      buf = Buffer.alloc(want);
      got = fs.readSync(fd, buf, 0, want, offset);
      end = buf.subarray(0, got).indexOf(0x0a);
    }
    if (end < 0) return { lines: [], nextOffset: offset, size }; // a line still being written
    const lines = buf.subarray(0, end).toString('utf8').split('\n').map(parseLogLine);
    return { lines, nextOffset: offset + end + 1, size };
  } finally {
    fs.closeSync(fd);
  }
}

function asS3Failure(e: unknown, what: string): never {
  if (e instanceof ApplicationFailure) throw e;
  const err = e as Error;
  if (s3ErrorKind(e) === 'rejected')
    throw ApplicationFailure.nonRetryable(`${what}: S3 refused: ${err.name}: ${err.message}`, ErrorType.S3Rejected);
  throw ApplicationFailure.create({
    message: `${what}: ${err.name}: ${err.message}`,
    type: ErrorType.S3Unavailable,
    nonRetryable: false,
  });
}

async function putObject(
  ctx: NodeContext,
  key: string,
  body: Buffer | fs.ReadStream,
  length: number,
  contentType: string,
): Promise<void> {
  const s3 = makeS3Client(ctx.s3);
  try {
    await s3.send(
      new PutObjectCommand({
        Bucket: ctx.s3.bucket,
        Key: key,
        Body: body,
        ContentLength: length,
        ContentType: contentType,
      }),
    );
  } catch (e) {
    asS3Failure(e, `put ${key}`);
  } finally {
    s3.destroy();
  }
}

/** The run's log, as the CRI file is, to logs/<job>/run-<run>.log. Idempotent (the same key is written again). */
export async function archiveRunLog(
  ctx: NodeContext,
  input: { jobId: string; run: number; logFile: string },
): Promise<{ key: string; bytes: number }> {
  const jobId = safeId('jobId', input.jobId);
  const run = runNumber(input.run);
  const logFile = runFile('logFile', input.logFile, jobId, 'log');
  const key = `logs/${jobId}/run-${run}.log`;
  let bytes = 0;
  try {
    bytes = fs.statSync(logFile).size;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  // A run that wrote nothing (or whose log never reached this node) is stored as an empty log.
  await putObject(
    ctx,
    key,
    bytes > 0 ? fs.createReadStream(logFile, { start: 0, end: bytes - 1 }) : Buffer.alloc(0),
    bytes,
    'text/plain',
  );
  ctx.logger.info({ job: jobId, run, node: ctx.node, key, bytes }, 'run log archived');
  return { key, bytes };
}

function lastLogLines(logFile: string | null, n: number): string[] {
  if (logFile === null) return [];
  try {
    const st = fs.statSync(logFile);
    const start = Math.max(0, st.size - 4 * 1024 * 1024);
    const fd = fs.openSync(logFile, 'r');
    try {
      const buf = Buffer.alloc(st.size - start);
      fs.readSync(fd, buf, 0, buf.length, start);
      return buf.toString('utf8').split('\n').filter(Boolean).slice(-n);
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return [];
  }
}

/** What a node was like when a job escalated, for an operator reading diagnostics/ in S3. */
export function nodeSnapshot(ctx: NodeContext): Record<string, unknown> {
  const mem = readText('/proc/meminfo', 1 << 20);
  const kib = (k: string): number | null => {
    const m = new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(mem);
    return m ? Number(m[1]) * 1024 : null;
  };
  let diskFreeBytes: number | null = null;
  try {
    const st = fs.statfsSync(ctx.dataDir);
    diskFreeBytes = st.bavail * st.bsize;
  } catch {
    /* data dir missing */
  }
  return {
    node: ctx.node,
    time: new Date().toISOString(),
    loadAverage: os.loadavg(),
    cpus: os.cpus().length,
    memory: { totalBytes: kib('MemTotal'), availableBytes: kib('MemAvailable'), swapFreeBytes: kib('SwapFree') },
    dataDir: ctx.dataDir,
    diskFreeBytes,
  };
}

/** A job that escalated: its last log lines, its runs and the node's state, under diagnostics/<job>/<at>/. */
export async function collectDiagnostics(
  ctx: NodeContext,
  input: { jobId: string; at: string; error: string; runs: RunRecord[]; logFile: string | null },
): Promise<{ prefix: string }> {
  const jobId = safeId('jobId', input.jobId);
  if (typeof input.at !== 'string' || !/^[0-9A-Za-z:.+-]{1,64}$/.test(input.at))
    throw invalid('at', `must be an RFC 3339 time (got ${JSON.stringify(input.at)})`);
  const logFile = input.logFile === null ? null : runFile('logFile', input.logFile, jobId, 'log');
  const prefix = `diagnostics/${jobId}/${input.at.replace(/:/g, '-')}/`;
  const tail = Buffer.from(
    lastLogLines(logFile, 100)
      .map((l) => `${l}\n`)
      .join(''),
  );
  const summary = Buffer.from(
    JSON.stringify(
      {
        jobId,
        at: input.at,
        error: input.error,
        runs: (input.runs ?? []).map((r) => ({
          run: r.run,
          node: r.node,
          exitCode: r.exitCode,
          signal: r.signal,
          reason: r.reason,
          message: r.message,
          startedAt: r.startedAt,
          endedAt: r.endedAt,
          durationMs: r.endedAt ? Date.parse(r.endedAt) - Date.parse(r.startedAt) : null,
        })),
      },
      null,
      2,
    ),
  );
  const node = Buffer.from(JSON.stringify(nodeSnapshot(ctx), null, 2));
  await putObject(ctx, `${prefix}log-tail.txt`, tail, tail.length, 'text/plain');
  await putObject(ctx, `${prefix}summary.json`, summary, summary.length, 'application/json');
  await putObject(ctx, `${prefix}node.json`, node, node.length, 'application/json');
  ctx.logger.info({ job: jobId, node: ctx.node, prefix }, 'job diagnostics stored');
  return { prefix };
}
