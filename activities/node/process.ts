import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ApplicationFailure } from '@temporalio/activity';
import { ErrorType } from '../../common/errors';
import type { ProcessIdentity } from '../../common/journal';
import { assertSafeId } from '../../common/ids';
import { type NodeContext, workloadDir } from './context';
import { registerWorkloadProcess } from './process-registry';

export interface WorkloadSpec {
  jobId: string;
  command: string[];
  env?: Record<string, string>;
}

export interface WorkloadInfo {
  jobId: string;
  pid: number;
  logFile: string;
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

/** The regular files a process writes to (its logs): they travel with the checkpoint so CRIU finds them on restore. */
export function writableFiles(pid: number): string[] {
  const out = new Set<string>();
  const fdDir = `/proc/${pid}/fd`;
  for (const fd of fs.readdirSync(fdDir)) {
    let target: string;
    let flags: number;
    try {
      target = fs.readlinkSync(path.join(fdDir, fd));
      const info = fs.readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
      flags = parseInt(/flags:\s*([0-7]+)/.exec(info)?.[1] ?? '0', 8);
    } catch {
      continue;
    }
    // O_WRONLY=1, O_RDWR=2
    if (target.startsWith('/') && (flags & 3) !== 0 && fs.existsSync(target) && fs.statSync(target).isFile()) out.add(target);
  }
  return [...out].sort();
}

/**
 * Starts a workload detached so that it outlives an agent crash, as the init of its own PID namespace
 * (and session leader inside it): CRIU then restores it into a fresh PID namespace, so a restore beside the
 * still-running original on the same host never clashes over pids.
 */
export async function startWorkload(ctx: NodeContext, spec: WorkloadSpec): Promise<WorkloadInfo> {
  assertSafeId('jobId', spec.jobId);
  if (!Array.isArray(spec.command) || spec.command.length === 0) throw ApplicationFailure.nonRetryable('command: must not be empty', ErrorType.InvalidInput);
  const dir = workloadDir(ctx, spec.jobId);
  fs.mkdirSync(dir, { recursive: true });
  const logFile = path.join(dir, 'output.log');
  const fd = fs.openSync(logFile, 'a');
  const child = spawn('unshare', ['--pid', '--fork', 'setsid', ...spec.command], {
    detached: true,
    stdio: ['ignore', fd, fd],
    cwd: dir,
    env: { ...process.env, ...spec.env, KYBERNATE_JOB_ID: spec.jobId },
  });
  fs.closeSync(fd);
  child.unref();
  if (child.pid === undefined) throw ApplicationFailure.nonRetryable(`could not start ${spec.command[0]}`, ErrorType.InvalidInput);
  const pid = await namespaceInit(child.pid);
  fs.writeFileSync(path.join(dir, 'pid'), String(pid));
  registerWorkloadProcess(ctx, pid, 'started', spec.jobId);
  ctx.logger.info({ job: spec.jobId, node: ctx.node, pid }, 'workload started');
  return { jobId: spec.jobId, pid, logFile };
}

/** The host pid of the process unshare forked into the new namespace (pid 1 there). */
async function namespaceInit(unsharePid: number): Promise<number> {
  for (let i = 0; i < 100; i++) {
    try {
      const kids = fs.readFileSync(`/proc/${unsharePid}/task/${unsharePid}/children`, 'utf8').trim();
      if (kids) return Number(kids.split(' ')[0]);
    } catch {
      throw ApplicationFailure.nonRetryable(`workload exited at once (unshare pid ${unsharePid})`, ErrorType.InvalidInput);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  throw ApplicationFailure.nonRetryable(`unshare pid ${unsharePid} forked no workload`, ErrorType.InvalidInput);
}

/**
 * SIGKILL; idempotent (a process already gone is success). With a start time it kills only that very process:
 * a kill queued while the agent was away must not hit another process that took the pid since.
 */
export async function killProcess(ctx: NodeContext, pid: number, reason: string, startTime?: number): Promise<{ killed: boolean }> {
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
  const file = path.join(workloadDir(ctx, assertSafeId('jobId', jobId)), 'pid');
  if (!fs.existsSync(file)) throw ApplicationFailure.nonRetryable(`no workload '${jobId}' was started on node ${ctx.node}`, ErrorType.NoSuchProcess);
  return Number(fs.readFileSync(file, 'utf8').trim());
}

/** Resident memory of a process and its descendants: about what CRIU will write for them. */
export function treeRssBytes(pid: number): number {
  let total = 0;
  const seen = new Set<number>();
  const visit = (p: number): void => {
    if (seen.has(p)) return;
    seen.add(p);
    try {
      total += Number(/^VmRSS:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${p}/status`, 'utf8'))?.[1] ?? 0) * 1024;
      for (const t of fs.readdirSync(`/proc/${p}/task`)) {
        for (const c of fs.readFileSync(`/proc/${p}/task/${t}/children`, 'utf8').trim().split(' ').filter(Boolean)) visit(Number(c));
      }
    } catch {
      /* exited meanwhile */
    }
  };
  visit(pid);
  return total;
}
