import * as fs from 'node:fs';
import * as path from 'node:path';
import type { KybernateConfig } from '../../common/config';
import { defaultStackHome } from './paths';
import { isAlive, recordAlive } from './supervise';

export type Component = 'temporal' | 'minio' | 'toxiproxy';

export interface ProcessRecord {
  component: string;
  pid: number;
  /** /proc/<pid>/stat start time: tells this process from a later one that got the same pid. */
  startTime?: number;
  log: string;
  command: string[];
  /** Environment added to ours at spawn: what a restart needs to start the very same thing again. */
  env?: Record<string, string>;
  cwd?: string;
  /** A worker or agent that joined the stack by itself (`kybernate agent` in another terminal). */
  handStarted?: boolean;
  /** host:port of a worker's or agent's Prometheus endpoint (/metrics); absent when it serves none. */
  metricsAddress?: string;
}

/** Everything a client needs to reach a running local stack, persisted as <home>/stack.json. */
export interface StackState {
  home: string;
  startedAt: string;
  temporal: { address: string; uiUrl: string; namespace: string; dbFile: string };
  s3: {
    endpoint: string;
    consoleUrl: string;
    region: string;
    accessKeyId: string;
    secretAccessKey: string;
    bucket: string;
    dataDir: string;
  };
  toxiproxy: {
    api: string;
    /** Proxies to put back when toxiproxy is restarted (saved from its API when it is stopped). */
    proxies?: ProxyConfig[];
    /**
     * Where workers and agents reach S3 and Temporal when `up` routed them through a named proxy (`s3`,
     * `temporal`), so that one toxiproxy call cuts, slows or restores that link for all of them.
     */
    routes?: { s3?: string; temporal?: string };
  } | null;
  processes: ProcessRecord[];
}

/** A toxiproxy proxy as its API describes it; kept in the state so that a restarted toxiproxy gets them back. */
export interface ProxyConfig {
  name: string;
  listen: string;
  upstream: string;
  enabled: boolean;
  toxics?: { name: string; type: string; stream: string; toxicity: number; attributes: Record<string, number> }[];
}

export const stateFile = (home: string): string => path.join(home, 'stack.json');

export function writeState(home: string, state: StackState): void {
  const tmp = `${stateFile(home)}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(state, null, 2));
  fs.renameSync(tmp, stateFile(home));
}

/**
 * Read-modify-write of the state file under a lock: agents and workers started by hand register themselves
 * while `restart` rewrites a pid, and neither may lose the other's change. The lock is a directory holding
 * its owner's pid; a lock whose owner died is broken.
 */
export function updateState(home: string, fn: (state: StackState) => void): StackState | null {
  const lock = `${stateFile(home)}.lock`;
  const deadline = Date.now() + 10000;
  for (;;) {
    try {
      fs.mkdirSync(lock);
      fs.writeFileSync(path.join(lock, 'owner'), String(process.pid));
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      let owner = NaN;
      try {
        owner = Number(fs.readFileSync(path.join(lock, 'owner'), 'utf8'));
      } catch {
        /* being created or removed right now */
      }
      if (Number.isInteger(owner) && owner > 0 && !isAlive(owner)) fs.rmSync(lock, { recursive: true, force: true });
      else if (Date.now() > deadline)
        throw new Error(`stack state ${stateFile(home)} stays locked by pid ${owner}`, { cause: e });
      else Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
    }
  }
  try {
    const state = readStackState(home);
    if (!state) return null;
    fn(state);
    writeState(home, state);
    return state;
  } finally {
    fs.rmSync(lock, { recursive: true, force: true });
  }
}

export function readStackState(home = defaultStackHome()): StackState | null {
  try {
    return JSON.parse(fs.readFileSync(stateFile(home), 'utf8')) as StackState;
  } catch {
    return null;
  }
}

/** How to reach the stack directly; with routed: through the proxies `up` routed workers through. */
export function configFromStack(state: StackState, routed = false): KybernateConfig {
  const routes = routed ? (state.toxiproxy?.routes ?? {}) : {};
  return {
    temporalAddress: routes.temporal ?? state.temporal.address,
    namespace: state.temporal.namespace,
    uiUrl: state.temporal.uiUrl,
    s3: { ...state.s3, endpoint: routes.s3 ?? state.s3.endpoint },
  };
}

/** Forgets a process that was stopped on purpose, so that `status` does not report it as failed. */
export function unregisterProcess(pid: number, home = defaultStackHome()): void {
  updateState(home, (state) => {
    state.processes = state.processes.filter((p) => p.pid !== pid);
  });
}

/** Records an extra process (a worker, an agent) so that `down` stops it with the stack. */
export function registerProcess(rec: ProcessRecord, home = defaultStackHome()): void {
  const state = updateState(home, (s) => {
    // A dead predecessor of the same component (crashed, or stopped by stopComponent) is replaced, not listed twice.
    s.processes = s.processes.filter((p) => p.component !== rec.component || recordAlive(p));
    s.processes.push(rec);
  });
  if (!state) throw new Error(`no stack state in ${home}; run 'kybernate up' first`);
}
