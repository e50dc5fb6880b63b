import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { processIdentity } from '../../activities/node/process';
import type { ProcessRecord } from './state';

export class ComponentFailedError extends Error {
  constructor(
    readonly component: string,
    message: string,
    readonly logFile?: string,
  ) {
    super(`${component} did not come up: ${message}${logFile ? ` (log: ${logFile})` : ''}`);
  }
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Starts a component in its own process group (so `down` can kill it and everything it forked) with its
 * output in a log file.
 */
export function startProcess(
  component: string,
  command: string[],
  logFile: string,
  env: Record<string, string> = {},
  cwd?: string,
): ProcessRecord {
  fs.mkdirSync(path.dirname(logFile), { recursive: true });
  const fd = fs.openSync(logFile, 'a');
  const child = spawn(command[0], command.slice(1), {
    detached: true,
    stdio: ['ignore', fd, fd],
    env: { ...process.env, ...env },
    cwd,
  });
  fs.closeSync(fd);
  child.unref();
  if (child.pid === undefined) throw new ComponentFailedError(component, `could not spawn ${command[0]}`, logFile);
  const startTime = processIdentity(child.pid)?.startTime;
  return {
    component,
    pid: child.pid,
    startTime,
    log: logFile,
    command,
    ...(Object.keys(env).length ? { env: { ...env } } : {}),
    ...(cwd ? { cwd } : {}),
  };
}

/** The recorded process is still running (and is that very process, where its start time was recorded). */
export function recordAlive(rec: Pick<ProcessRecord, 'pid' | 'startTime'>): boolean {
  if (rec.startTime === undefined) return isAlive(rec.pid);
  return processIdentity(rec.pid)?.startTime === rec.startTime;
}

export async function waitFor(
  component: string,
  rec: ProcessRecord | null,
  probe: () => Promise<boolean>,
  timeoutMs: number,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError = 'no answer yet';
  while (Date.now() < deadline) {
    if (rec && !isAlive(rec.pid)) {
      const tail = fs.existsSync(rec.log) ? fs.readFileSync(rec.log, 'utf8').split('\n').slice(-15).join('\n') : '';
      throw new ComponentFailedError(component, `process ${rec.pid} exited during start-up\n${tail}`, rec.log);
    }
    try {
      if (await probe()) return;
    } catch (e) {
      lastError = (e as Error).message;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new ComponentFailedError(component, `no healthy answer within ${timeoutMs} ms (last: ${lastError})`, rec?.log);
}

/** Kills a process group: TERM, then KILL after a grace period. */
export async function killGroup(pid: number, graceMs = 5000): Promise<void> {
  const signal = (sig: NodeJS.Signals): void => {
    try {
      process.kill(-pid, sig);
    } catch {
      try {
        process.kill(pid, sig);
      } catch {
        /* already gone */
      }
    }
  };
  if (!isAlive(pid)) return;
  signal('SIGTERM');
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline && isAlive(pid)) await new Promise((r) => setTimeout(r, 100));
  signal('SIGKILL');
  while (isAlive(pid)) await new Promise((r) => setTimeout(r, 50));
}
