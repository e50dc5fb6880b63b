import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ApplicationFailure } from '@temporalio/activity';
import { ErrorType } from '../../common/errors';
import type { ProcessIdentity } from '../../common/journal';
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
import { registerWorkloadProcess } from './process-registry';
import { heartbeat } from './run-tool';

export interface WorkloadSpec {
  jobId: string;
  command: string[];
  /** The job's own variables, added to the documented minimum the agent passes on (launch.ts INHERITED_ENV). */
  env?: Record<string, string>;
  /** Absolute directory the workload runs in and resolves a relative command against (the CLI passes its own); default: the workload's directory. */
  cwd?: string;
  /** Run as this numeric user (and group; default: the user's primary group) instead of the agent's user. */
  user?: { uid: number; gid?: number };
}

export interface WorkloadInfo {
  jobId: string;
  pid: number;
  logFile: string;
  /** With pid, names the very process (pids get reused). */
  startTime?: number;
}

/** Fields of /proc/<pid>/stat after the command name: [0] is the state, [11] utime, [12] stime (man 5 proc). */
export function procStatFields(pid: number): string[] {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
  // A zombie still answers kill(0): it is not running.
  try {
    return procStatFields(pid)[0] !== 'Z';
  } catch {
    return false;
  }
}

/** pid and start time (/proc/<pid>/stat field 22); null when the process is gone or a zombie. */
export function processIdentity(pid: number): ProcessIdentity | null {
  try {
    const f = procStatFields(pid);
    return f[0] === 'Z' ? null : { pid, startTime: Number(f[19]) };
  } catch {
    return null;
  }
}

/** The very process named, not another that took its pid since. */
export function isSameProcess(id: ProcessIdentity): boolean {
  return processIdentity(id.pid)?.startTime === id.startTime;
}

export function requireProcess(pid: number): void {
  if (!processAlive(pid)) throw ApplicationFailure.nonRetryable(`no such process: pid ${pid}`, ErrorType.NoSuchProcess);
}

/**
 * The regular files a process tree writes to (its logs): they travel with the checkpoint so CRIU finds them on
 * restore. The whole tree, since the workload proper runs under an init and may have children of its own.
 */
export function writableFiles(pid: number): string[] {
  const out = new Set<string>();
  for (const p of processTree(pid)) {
    const fdDir = `/proc/${p}/fd`;
    let fds: string[];
    try {
      fds = fs.readdirSync(fdDir);
    } catch {
      continue; // exited meanwhile
    }
    for (const fd of fds) {
      let target: string;
      let flags: number;
      try {
        target = fs.readlinkSync(path.join(fdDir, fd));
        const info = fs.readFileSync(`/proc/${p}/fdinfo/${fd}`, 'utf8');
        flags = parseInt(/flags:\s*([0-7]+)/.exec(info)?.[1] ?? '0', 8);
      } catch {
        continue;
      }
      // O_WRONLY=1, O_RDWR=2
      if (target.startsWith('/') && (flags & 3) !== 0 && fs.existsSync(target) && fs.statSync(target).isFile())
        out.add(target);
    }
  }
  return [...out].sort();
}

/** A process and its descendants, root first; processes that exit meanwhile are left out. */
export function processTree(root: number): number[] {
  const out: number[] = [];
  const seen = new Set<number>();
  const queue = [root];
  while (queue.length > 0) {
    const p = queue.shift()!;
    if (seen.has(p)) continue;
    seen.add(p);
    let tasks: string[];
    try {
      tasks = fs.readdirSync(`/proc/${p}/task`);
    } catch {
      continue;
    }
    out.push(p);
    for (const t of tasks) {
      try {
        for (const c of fs.readFileSync(`/proc/${p}/task/${t}/children`, 'utf8').trim().split(' ').filter(Boolean))
          queue.push(Number(c));
      } catch {
        /* thread exited meanwhile */
      }
    }
  }
  return out;
}

/** CPU time (user + system, clock ticks) of a process tree: an init under which the workload runs uses none. */
export function treeCpuTicks(root: number): number {
  let total = 0;
  for (const p of processTree(root)) {
    try {
      const f = procStatFields(p);
      total += Number(f[11]) + Number(f[12]);
    } catch {
      /* exited meanwhile */
    }
  }
  return total;
}

/** How long a freshly started workload must stay up to count as started: one that dies of a bad argument does so within it. */
export const START_SETTLE_MS = 1000;

/** Jobs this agent is starting right now: two concurrent starts of one job must not both pass the check. */
export const starting = new Set<string>();

/**
 * Starts a workload detached so that it outlives an agent crash, in its own PID namespace: CRIU then restores
 * it into a fresh one, so a restore beside the still-running original on the same host never clashes over
 * pids. The namespace's pid 1 is a small init (tini) that forwards signals to the workload and reaps
 * zombies: the kernel drops signals without a handler sent to a namespace's init, so a workload that was
 * itself pid 1 could not be stopped with SIGTERM. Privileges are dropped (--user) after the namespace exists,
 * since creating it needs root, and in the init's child, so nothing the job runs keeps root. Everything that
 * can be checked is checked before the spawn; after it, the workload must still be up a moment later.
 */
export async function startWorkload(ctx: NodeContext, spec: WorkloadSpec): Promise<WorkloadInfo> {
  const jobId = safeId('jobId', spec.jobId);
  checkCommand(spec.command);
  const runAs = resolveRunAs(spec.user);
  const cwd = spec.cwd === undefined ? null : checkCwd(spec.cwd);
  const env = workloadEnv({
    jobId,
    jobEnv: spec.env,
    parent: process.env,
    home: runAs?.home ?? process.env.HOME ?? '/',
  });
  if (starting.has(jobId))
    throw ApplicationFailure.nonRetryable(
      `job ${jobId} is being started on node ${ctx.node} right now`,
      ErrorType.JobAlreadyRunning,
    );
  starting.add(jobId);
  try {
    const running = runningWorkload(ctx, jobId);
    if (running) {
      throw ApplicationFailure.nonRetryable(
        `job ${jobId} is already running on node ${ctx.node} as pid ${running.pid}; stop it or use another job id`,
        ErrorType.JobAlreadyRunning,
      );
    }
    const dir = workloadDir(ctx, jobId);
    fs.mkdirSync(dir, { recursive: true });
    const workDir = cwd ?? dir;
    const exe = resolveExecutable(spec.command[0], workDir, env.PATH, runAs);
    if (ctx.initBin !== null) resolveExecutable(ctx.initBin, '/', '', null);
    const logFile = path.join(dir, 'output.log');
    const fd = fs.openSync(logFile, 'a');
    const logStart = fs.fstatSync(fd).size;
    if (runAs) {
      // The workload may reopen its log and write beside it; CRIU also reopens the log by path on restore.
      fs.chownSync(dir, runAs.uid, runAs.gid);
      fs.fchownSync(fd, runAs.uid, runAs.gid);
    }
    const dropPrivileges = dropPrivilegesPrefix(runAs);
    const init = initPrefix(ctx.initBin);
    // The init stays root (it may live where the user cannot read, e.g. under /root); setpriv drops privileges
    // in the init's child just before it becomes the workload.
    const child = spawn(
      'unshare',
      ['--pid', '--fork', 'setsid', ...init, ...dropPrivileges, exe, ...spec.command.slice(1)],
      {
        detached: true,
        stdio: ['ignore', fd, fd],
        cwd: workDir,
        env,
      },
    );
    fs.closeSync(fd);
    child.unref();
    let exited: string | null = null;
    child.on('exit', (code, signal) => (exited = signal ? `killed by ${signal}` : `exited with status ${code}`));
    child.on('error', (e) => (exited = `could not be spawned: ${e.message}`));
    const failed = (why: string, pid?: number): ApplicationFailure => {
      // Nothing is left running after a failed start.
      for (const p of [pid, child.pid]) {
        try {
          if (p !== undefined && processAlive(p)) process.kill(p, 'SIGKILL');
        } catch {
          /* gone meanwhile */
        }
      }
      const out = readFrom(logFile, logStart).trim();
      return ApplicationFailure.nonRetryable(
        `${spec.command[0]} (${exe}) ${why}${out ? `; its output:\n${out}` : ''}`,
        ErrorType.StartFailure,
      );
    };
    if (child.pid === undefined) {
      await new Promise((r) => setImmediate(r));
      throw failed(exited ?? 'could not be spawned');
    }
    const pid = await namespaceInit(child.pid, () => exited);
    if (typeof pid === 'string') throw failed(pid);
    for (let waited = 0; waited < START_SETTLE_MS && exited === null && processAlive(pid); waited += 50)
      await new Promise((r) => setTimeout(r, 50));
    if (exited !== null || !processAlive(pid)) throw failed(`${exited ?? 'exited'} right after it started`, pid);
    const id = processIdentity(pid);
    if (!id) throw failed('exited right after it started', pid);
    writePidFile(path.join(dir, 'pid'), id);
    registerWorkloadProcess(ctx, pid, 'started', jobId);
    ctx.logger.info({ job: jobId, node: ctx.node, pid, cwd: workDir, uid: runAs?.uid, exe }, 'workload started');
    const blocker = runAs ? otherUserCheckpointBlocker() : null;
    if (blocker)
      ctx.logger.warn(
        { job: jobId, node: ctx.node, pid, uid: runAs?.uid },
        `this workload cannot be checkpointed on this node: ${blocker}`,
      );
    return { jobId, pid, logFile, startTime: id.startTime };
  } finally {
    starting.delete(jobId);
  }
}

function readFrom(file: string, offset: number, max = 4000): string {
  try {
    const text = fs.readFileSync(file).subarray(offset).toString('utf8');
    return text.length > max ? text.slice(-max) : text;
  } catch {
    return '';
  }
}

/** The host pid of the process unshare forked into the new namespace (pid 1 there), or why there is none. */
export async function namespaceInit(unsharePid: number, exited: () => string | null): Promise<number | string> {
  for (let i = 0; i < 250; i++) {
    try {
      const kids = fs.readFileSync(`/proc/${unsharePid}/task/${unsharePid}/children`, 'utf8').trim();
      if (kids) return Number(kids.split(' ')[0]);
    } catch {
      return exited() ?? 'exited at once';
    }
    if (exited() !== null) return exited()!;
    await new Promise((r) => setTimeout(r, 20));
  }
  return `was not forked into its namespace within 5 s (unshare pid ${unsharePid})`;
}

/**
 * The job's process if it still runs: the very process of the pid file (same start time), or, for an old
 * pid file without one, a live process whose environment names the job.
 */
export function runningWorkload(ctx: NodeContext, jobId: string): ProcessIdentity | null {
  const rec = readPidFile(path.join(workloadDir(ctx, jobId), 'pid'));
  if (!rec) return null;
  if (rec.startTime !== undefined)
    return isSameProcess({ pid: rec.pid, startTime: rec.startTime })
      ? { pid: rec.pid, startTime: rec.startTime }
      : null;
  const id = processIdentity(rec.pid);
  if (!id) return null;
  try {
    return fs.readFileSync(`/proc/${rec.pid}/environ`, 'utf8').split('\0').includes(`KYBERNATE_JOB_ID=${jobId}`)
      ? id
      : null;
  } catch {
    return null;
  }
}

/**
 * SIGKILL; idempotent (a process already gone is success). With a start time it kills only that very process:
 * a kill queued while the agent was away must not hit another process that took the pid since.
 */
export async function killProcess(
  ctx: NodeContext,
  pid: number,
  reason: string,
  startTime?: number,
): Promise<{ killed: boolean }> {
  if (!processAlive(pid)) return { killed: false };
  if (startTime !== undefined && !isSameProcess({ pid, startTime })) {
    ctx.logger.warn({ node: ctx.node, pid, startTime, reason }, 'not killed: the pid now names another process');
    return { killed: false };
  }
  process.kill(pid, 'SIGKILL');
  for (let i = 0; i < 100 && processAlive(pid); i++) await new Promise((r) => setTimeout(r, 50));
  ctx.logger.warn({ node: ctx.node, pid, reason }, 'workload killed');
  return { killed: true };
}

export function readWorkloadPid(ctx: NodeContext, jobId: string): number {
  const file = path.join(workloadDir(ctx, jobId), 'pid');
  const rec = readPidFile(file);
  if (!rec)
    throw ApplicationFailure.nonRetryable(
      `no workload '${jobId}' was started on node ${ctx.node}`,
      ErrorType.NoSuchProcess,
    );
  if (rec.startTime !== undefined && !isSameProcess({ pid: rec.pid, startTime: rec.startTime })) {
    throw ApplicationFailure.nonRetryable(
      `workload '${jobId}' on node ${ctx.node} (pid ${rec.pid}) is no longer running`,
      ErrorType.NoSuchProcess,
    );
  }
  return rec.pid;
}

/** How long a stopped workload gets between SIGTERM and SIGKILL unless the stop says otherwise. */
export const DEFAULT_STOP_GRACE_MS = 30000;

/**
 * Stops a process the polite way: SIGTERM (a workload under an init gets it forwarded), up to graceMs for it
 * to exit, then SIGKILL. Idempotent; with a start time it touches only that very process.
 */
export async function stopProcess(
  ctx: NodeContext,
  pid: number,
  reason: string,
  graceMs: number,
  startTime?: number,
): Promise<{ stopped: boolean; signal: 'SIGTERM' | 'SIGKILL' | null; afterMs: number }> {
  const started = Date.now();
  if (!processAlive(pid) || (startTime !== undefined && !isSameProcess({ pid, startTime })))
    return { stopped: false, signal: null, afterMs: 0 };
  process.kill(pid, 'SIGTERM');
  while (processAlive(pid) && Date.now() - started < graceMs) {
    heartbeat();
    await new Promise((r) => setTimeout(r, 100));
  }
  if (!processAlive(pid)) {
    ctx.logger.info({ node: ctx.node, pid, reason, afterMs: Date.now() - started }, 'workload stopped by SIGTERM');
    return { stopped: true, signal: 'SIGTERM', afterMs: Date.now() - started };
  }
  await killProcess(ctx, pid, `${reason}: still running ${graceMs} ms after SIGTERM`, startTime);
  return { stopped: true, signal: 'SIGKILL', afterMs: Date.now() - started };
}

/** Resident memory of a process and its descendants: about what CRIU will write for them. */
export function treeRssBytes(pid: number): number {
  let total = 0;
  for (const p of processTree(pid)) {
    try {
      total += Number(/^VmRSS:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${p}/status`, 'utf8'))?.[1] ?? 0) * 1024;
    } catch {
      /* exited meanwhile */
    }
  }
  return total;
}
