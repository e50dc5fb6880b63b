import * as fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  type Component,
  ComponentFailedError,
  createBucket,
  httpOk,
  isAlive,
  type ProcessRecord,
  type ProxyConfig,
  readStackState,
  recordAlive,
  type StackState,
  startProcess,
  temporalHealthy,
  updateState,
  waitFor,
} from './stack';
import { InvalidInputError } from '../../common/ids';
import { waitForWorker } from './workers';

/** What `restart` can take: a service, the control worker, or a node's agent. */
export type StackComponent = Component | 'control-worker' | `agent:${string}`;

export function parseStackComponent(name: string): StackComponent {
  if (name === 'worker') return 'control-worker';
  if (
    ['temporal', 'minio', 'toxiproxy', 'control-worker'].includes(name) ||
    /^agent:[A-Za-z0-9][A-Za-z0-9._-]*$/.test(name)
  )
    return name as StackComponent;
  throw new InvalidInputError('component', `'${name}' is none of temporal, minio, toxiproxy, worker, agent:<node>`);
}

/** `restart --down <ms>`: how long the component stays down. */
export function parseDownMs(value: string): number {
  const ms = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(ms))
    throw new InvalidInputError('down', `must be a whole number of milliseconds (got '${value}')`);
  return ms;
}
const isService = (c: StackComponent): c is Component => c === 'temporal' || c === 'minio' || c === 'toxiproxy';

export interface StopOptions {
  /** SIGKILL (default: a crash, nothing flushed) or SIGTERM (a clean shutdown, SIGKILL after graceMs). */
  signal?: 'SIGKILL' | 'SIGTERM';
  graceMs?: number;
}

function requireState(home: string): StackState {
  const state = readStackState(home);
  if (!state) throw new Error(`no stack state in ${home}; run 'kybernate up' first`);
  return state;
}

function recordOf(state: StackState, component: StackComponent): ProcessRecord {
  // The newest record: a component started by hand twice is the one `restart` means.
  const rec = [...state.processes].reverse().find((p) => p.component === component);
  if (!rec)
    throw new Error(
      `component '${component}' is not part of the stack in ${state.home}${component === 'toxiproxy' ? " (start it with 'up --toxiproxy')" : ''}`,
    );
  return rec;
}

/** Signals the process group (the component and anything it forked) and waits until the component is gone. */
async function signalAndWait(rec: ProcessRecord, opts: StopOptions): Promise<void> {
  const send = (sig: NodeJS.Signals): void => {
    try {
      process.kill(-rec.pid, sig);
    } catch {
      try {
        process.kill(rec.pid, sig);
      } catch {
        /* already gone */
      }
    }
  };
  const signal = opts.signal ?? 'SIGKILL';
  send(signal);
  const deadline = Date.now() + (signal === 'SIGTERM' ? (opts.graceMs ?? 10000) : 10000);
  while (recordAlive(rec) && Date.now() < deadline) await sleep(50);
  if (recordAlive(rec)) {
    send('SIGKILL');
    while (isAlive(rec.pid) && recordAlive(rec)) await sleep(50);
  }
}

/** What toxiproxy holds only in memory: read before it is stopped so that startComponent can put it back. */
async function saveProxies(home: string, api: string): Promise<void> {
  let proxies: ProxyConfig[];
  try {
    const res = await fetch(`${api}/proxies`, { signal: AbortSignal.timeout(2000) });
    if (!res.ok) return;
    proxies = Object.values((await res.json()) as Record<string, ProxyConfig>).map((p) => ({
      name: p.name,
      listen: p.listen,
      upstream: p.upstream,
      enabled: p.enabled,
      toxics: (p.toxics ?? []).map((t) => ({
        name: t.name,
        type: t.type,
        stream: t.stream,
        toxicity: t.toxicity,
        attributes: t.attributes,
      })),
    }));
  } catch {
    return; // not answering (already dead): the last saved list stands
  }
  updateState(home, (s) => {
    if (s.toxiproxy) s.toxiproxy.proxies = proxies;
  });
}

async function restoreProxies(api: string, proxies: ProxyConfig[]): Promise<void> {
  const call = async (method: string, path: string, body: unknown): Promise<void> => {
    const res = await fetch(`${api}${path}`, {
      method,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(5000),
    });
    // 409: it exists already (a start that was retried).
    if (!res.ok && res.status !== 409)
      throw new ComponentFailedError('toxiproxy', `${method} ${path}: ${res.status} ${await res.text()}`);
  };
  for (const p of proxies) {
    await call('POST', '/proxies', { name: p.name, listen: p.listen, upstream: p.upstream, enabled: p.enabled });
    for (const t of p.toxics ?? []) await call('POST', `/proxies/${p.name}/toxics`, t);
  }
}

/**
 * Stops one component of the local stack and leaves its record in the state, so that startComponent starts
 * it again: a service on the same port with the same data, a worker or agent with the same command line.
 * Default SIGKILL: a crash. Returns the record of the stopped process.
 */
export async function stopComponent(
  home: string,
  component: StackComponent,
  opts: StopOptions = {},
): Promise<ProcessRecord> {
  const state = requireState(home);
  const rec = recordOf(state, component);
  if (component === 'toxiproxy' && state.toxiproxy && recordAlive(rec)) await saveProxies(home, state.toxiproxy.api);
  if (recordAlive(rec)) await signalAndWait(rec, opts);
  // A worker or agent started by hand forgets itself on a clean exit; the record stays, to be started again.
  updateState(home, (s) => {
    if (!s.processes.some((p) => p.pid === rec.pid)) s.processes.push(rec);
  });
  return rec;
}

/** Waits until the component answers as `up` requires it to (the bucket exists, the proxies are back, it polls). */
async function waitHealthy(state: StackState, component: StackComponent, rec: ProcessRecord): Promise<void> {
  if (!isService(component)) {
    await waitForWorker(state, rec);
  } else if (component === 'temporal') {
    await waitFor('temporal', rec, () => temporalHealthy(state.temporal.address), 60000);
    await waitFor('temporal-ui', rec, () => httpOk(state.temporal.uiUrl), 30000);
  } else if (component === 'minio') {
    await waitFor('minio', rec, () => httpOk(`${state.s3.endpoint}/minio/health/live`), 60000);
    await createBucket(state);
  } else {
    const tox = state.toxiproxy;
    if (!tox) throw new Error('toxiproxy is not part of this stack');
    await waitFor('toxiproxy', rec, () => httpOk(`${tox.api}/version`), 30000);
    await restoreProxies(tox.api, tox.proxies ?? []);
  }
}

/**
 * Starts a stopped component again with the command and environment it was first started with: the same
 * ports, Temporal's SQLite file and search attributes, MinIO's data directory, toxiproxy's proxies; a worker
 * or agent with its command line (one started by hand now runs detached, logging under <home>/logs).
 * Records the new pid and returns once it is healthy. A component still running is left alone (and waited for).
 */
export async function startComponent(home: string, component: StackComponent): Promise<ProcessRecord> {
  const state = requireState(home);
  const old = recordOf(state, component);
  if (recordAlive(old)) {
    await waitHealthy(state, component, old);
    return old;
  }
  if (!fs.existsSync(old.command[0]))
    throw new ComponentFailedError(component, `binary ${old.command[0]} is missing; run 'npm run provision'`);
  const rec = startProcess(component, old.command, old.log, old.env ?? {}, old.cwd);
  updateState(home, (s) => {
    s.processes = s.processes.map((p) => (p.component === component && p.pid === old.pid ? rec : p));
  });
  await waitHealthy(state, component, rec);
  return rec;
}

/** stopComponent, an optional outage of downMs, then startComponent: a service crash and its comeback. */
export async function restartComponent(
  home: string,
  component: StackComponent,
  opts: StopOptions & { downMs?: number } = {},
): Promise<ProcessRecord> {
  await stopComponent(home, component, opts);
  if (opts.downMs) await sleep(opts.downMs);
  return startComponent(home, component);
}
