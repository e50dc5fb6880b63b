import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Connection } from '@temporalio/client';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { ALL_SEARCH_ATTRIBUTES } from '../../common/search-attributes';
import type { KybernateConfig } from '../../common/config';
import { processIdentity } from '../../activities/node/process';
import { BIN, defaultStackHome, REPO_ROOT, stagingRootFor } from './paths';
import { startComponent } from './components';
import { killWorkloads } from './workloads';
import { freePort, isPortTaken } from './ports';

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
  s3: { endpoint: string; consoleUrl: string; region: string; accessKeyId: string; secretAccessKey: string; bucket: string; dataDir: string };
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

export class ComponentFailedError extends Error {
  constructor(readonly component: string, message: string, readonly logFile?: string) {
    super(`${component} did not come up: ${message}${logFile ? ` (log: ${logFile})` : ''}`);
  }
}

const stateFile = (home: string): string => path.join(home, 'stack.json');

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
      else if (Date.now() > deadline) throw new Error(`stack state ${stateFile(home)} stays locked by pid ${owner}`, { cause: e });
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
  const routes = routed ? state.toxiproxy?.routes ?? {} : {};
  return {
    temporalAddress: routes.temporal ?? state.temporal.address,
    namespace: state.temporal.namespace,
    uiUrl: state.temporal.uiUrl,
    s3: { ...state.s3, endpoint: routes.s3 ?? state.s3.endpoint },
  };
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
export function startProcess(component: string, command: string[], logFile: string, env: Record<string, string> = {}, cwd?: string): ProcessRecord {
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
  return { component, pid: child.pid, startTime, log: logFile, command, ...(Object.keys(env).length ? { env: { ...env } } : {}), ...(cwd ? { cwd } : {}) };
}

/** The recorded process is still running (and is that very process, where its start time was recorded). */
export function recordAlive(rec: Pick<ProcessRecord, 'pid' | 'startTime'>): boolean {
  if (rec.startTime === undefined) return isAlive(rec.pid);
  return processIdentity(rec.pid)?.startTime === rec.startTime;
}

export async function waitFor(component: string, rec: ProcessRecord | null, probe: () => Promise<boolean>, timeoutMs: number): Promise<void> {
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

export async function httpOk(url: string): Promise<boolean> {
  const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
  return res.ok;
}

export async function temporalHealthy(address: string): Promise<boolean> {
  const conn = await Connection.connect({ address, connectTimeout: 2000 });
  try {
    await conn.workflowService.getSystemInfo({});
    return true;
  } finally {
    await conn.close();
  }
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

export interface UpOptions {
  home?: string;
  /** When set, a watchdog stops the stack as soon as this process dies (test runs, Ctrl-C). */
  ownerPid?: number;
  toxiproxy?: boolean;
  /**
   * Named toxiproxy proxies that workers and agents reach S3 and Temporal through (implies toxiproxy), so a
   * fault test cuts, slows or restores one link with one call to toxiproxy's API.
   */
  proxies?: ProxiedLink[];
  log?: (msg: string) => void;
}

export type ProxiedLink = 's3' | 'temporal';

/** Starts Temporal, MinIO and toxiproxy in order; returns once each answers, or throws naming the one that did not. */
export async function up(opts: UpOptions = {}): Promise<StackState> {
  const home = opts.home ?? defaultStackHome();
  const log = opts.log ?? ((m: string) => process.stderr.write(`[stack] ${m}\n`));
  const existing = readStackState(home);
  if (existing) {
    // A stack that is there keeps its ports, data and workloads: a service that died (a crash, a reboot of
    // one process) is started again in place, never the whole stack torn down and its workloads with it.
    for (const c of ['temporal', 'minio', 'toxiproxy'] as const) {
      const rec = existing.processes.find((p) => p.component === c);
      if (rec && !recordAlive(rec)) {
        log(`${c} (pid ${rec.pid}) is not running: starting it again on its port with its data`);
        await startComponent(home, c);
      }
    }
    if ((opts.toxiproxy || opts.proxies?.length) && !existing.toxiproxy) log("this stack runs without toxiproxy: 'down' first to add it");
    log(`running (state ${stateFile(home)})`);
    return readStackState(home) ?? existing;
  }
  // A port can still be taken between our check and the service's bind (another process naming it): such a
  // start is torn down and tried again on other ports; any other failure is reported as it is.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startFresh(home, opts, log);
    } catch (e) {
      if (attempt >= 3 || !(e instanceof ComponentFailedError) || !isPortTaken(e.message)) throw e;
      log(`${e.message.split('\n')[0]}: a port was taken during start-up, starting again on other ports (attempt ${attempt + 1} of 3)`);
    }
  }
}

async function startFresh(home: string, opts: UpOptions, log: (msg: string) => void): Promise<StackState> {
  for (const [name, bin] of Object.entries({ temporal: BIN.temporal, minio: BIN.minio })) {
    if (!fs.existsSync(bin)) throw new ComponentFailedError(name, `binary ${bin} is missing; run 'npm run provision'`);
  }
  fs.mkdirSync(path.join(home, 'logs'), { recursive: true });
  const processes: ProcessRecord[] = [];
  const persist = (state: StackState): void => writeState(home, state);
  const proxied = [...new Set(opts.proxies ?? [])];
  const withToxiproxy = Boolean(opts.toxiproxy) || proxied.length > 0;
  const [tPort, uiPort, s3Port, consolePort, toxPort] = await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort()]);
  const state: StackState = {
    home,
    startedAt: new Date().toISOString(),
    temporal: { address: `127.0.0.1:${tPort}`, uiUrl: `http://127.0.0.1:${uiPort}`, namespace: 'default', dbFile: path.join(home, 'temporal.sqlite') },
    s3: {
      endpoint: `http://127.0.0.1:${s3Port}`,
      consoleUrl: `http://127.0.0.1:${consolePort}`,
      region: 'us-east-1',
      accessKeyId: 'kybernate',
      secretAccessKey: 'kybernate-local-secret',
      bucket: 'kybernate-checkpoints',
      dataDir: path.join(home, 'minio-data'),
    },
    toxiproxy: withToxiproxy ? { api: `http://127.0.0.1:${toxPort}` } : null,
    processes,
  };
  try {
    // Temporal first: workers and clients need it; MinIO after (nothing in Temporal depends on it).
    const saArgs = ALL_SEARCH_ATTRIBUTES.flatMap((k) => ['--search-attribute', `${k.name}=Keyword`]);
    const temporal = startProcess(
      'temporal',
      [BIN.temporal, 'server', 'start-dev', '--ip', '127.0.0.1', '--port', String(tPort), '--ui-port', String(uiPort),
        '--db-filename', state.temporal.dbFile, '--log-level', 'warn', ...saArgs,
        '--dynamic-config-value', 'matching.useNewMatcher=true', '--dynamic-config-value', 'matching.enableFairness=true'],
      path.join(home, 'logs', 'temporal.log'),
    );
    processes.push(temporal);
    persist(state);
    const minio = startProcess(
      'minio',
      [BIN.minio, 'server', state.s3.dataDir, '--address', `127.0.0.1:${s3Port}`, '--console-address', `127.0.0.1:${consolePort}`, '--quiet'],
      path.join(home, 'logs', 'minio.log'),
      { MINIO_ROOT_USER: state.s3.accessKeyId, MINIO_ROOT_PASSWORD: state.s3.secretAccessKey, MINIO_BROWSER: 'on', MINIO_UPDATE: 'off' },
    );
    processes.push(minio);
    persist(state);
    if (withToxiproxy) {
      if (!fs.existsSync(BIN.toxiproxy)) throw new ComponentFailedError('toxiproxy', `binary ${BIN.toxiproxy} is missing; run 'npm run provision'`);
      const tox = startProcess('toxiproxy', [BIN.toxiproxy, '-host', '127.0.0.1', '-port', String(toxPort)], path.join(home, 'logs', 'toxiproxy.log'));
      processes.push(tox);
      persist(state);
    }
    if (opts.ownerPid) {
      const wd = startProcess('watchdog', ['bash', path.join(REPO_ROOT, 'deploy', 'local', 'watchdog.sh'), String(opts.ownerPid), stateFile(home),
        ...processes.map((p) => String(p.pid))], path.join(home, 'logs', 'watchdog.log'), { KYBERNATE_STAGING_ROOT: stagingRootFor(home) });
      processes.push(wd);
      persist(state);
    }
    await waitFor('temporal', temporal, () => temporalHealthy(state.temporal.address), 60000);
    await waitFor('temporal-ui', temporal, () => httpOk(state.temporal.uiUrl), 30000);
    log(`temporal up at ${state.temporal.address}, UI ${state.temporal.uiUrl}`);
    await waitFor('minio', minio, () => httpOk(`${state.s3.endpoint}/minio/health/live`), 60000);
    await createBucket(state);
    log(`minio up at ${state.s3.endpoint}, bucket ${state.s3.bucket}`);
    if (state.toxiproxy) {
      const api = state.toxiproxy.api;
      await waitFor('toxiproxy', processes.find((p) => p.component === 'toxiproxy') ?? null, () => httpOk(`${api}/version`), 30000);
      state.toxiproxy.routes = await createRoutes(api, state, proxied);
      log(`toxiproxy up at ${api}${proxied.length ? `, routing ${proxied.map((l) => `${l} via ${state.toxiproxy?.routes?.[l]}`).join(', ')}` : ''}`);
    }
    persist(state);
    return state;
  } catch (e) {
    await down({ home, log });
    throw e;
  }
}

/** The proxies named after the links they carry, on free ports; returns where workers reach each link. */
async function createRoutes(api: string, state: StackState, links: ProxiedLink[]): Promise<{ s3?: string; temporal?: string }> {
  const routes: { s3?: string; temporal?: string } = {};
  for (const link of links) {
    const upstream = link === 's3' ? new URL(state.s3.endpoint).host : state.temporal.address;
    const res = await fetch(`${api}/proxies`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, signal: AbortSignal.timeout(5000),
      body: JSON.stringify({ name: link, listen: '127.0.0.1:0', upstream, enabled: true }),
    });
    if (!res.ok) throw new ComponentFailedError('toxiproxy', `could not create proxy '${link}': ${res.status} ${await res.text()}`);
    const listen = ((await res.json()) as { listen: string }).listen;
    routes[link] = link === 's3' ? `http://${listen}` : listen;
  }
  return routes;
}

export async function createBucket(state: StackState): Promise<void> {
  const s3 = new S3Client({
    endpoint: state.s3.endpoint,
    region: state.s3.region,
    forcePathStyle: true,
    credentials: { accessKeyId: state.s3.accessKeyId, secretAccessKey: state.s3.secretAccessKey },
  });
  try {
    await waitFor('minio-bucket', null, async () => {
      try {
        await s3.send(new CreateBucketCommand({ Bucket: state.s3.bucket }));
      } catch (e) {
        const name = (e as Error).name;
        if (name !== 'BucketAlreadyOwnedByYou' && name !== 'BucketAlreadyExists') throw e;
      }
      return true;
    }, 30000);
  } finally {
    s3.destroy();
  }
}

/** Stops every process recorded for the stack (workers started by the supervisor included) and forgets them. */
export async function down(opts: { home?: string; log?: (msg: string) => void } = {}): Promise<void> {
  const home = opts.home ?? defaultStackHome();
  const log = opts.log ?? ((m: string) => process.stderr.write(`[stack] ${m}\n`));
  const state = readStackState(home);
  if (!state) return;
  // Workers before the services they use, Temporal last; the watchdog after everything, so that a `down`
  // cut short (a crashing test run) still leaves it to finish the job.
  const order = [...state.processes].reverse().sort((a, b) => Number(a.component === 'watchdog') - Number(b.component === 'watchdog'));
  for (const p of order) {
    // A component stopped on purpose (stopComponent) may have left its pid to another process since.
    if (!recordAlive(p)) continue;
    await killGroup(p.pid);
    log(`stopped ${p.component} (pid ${p.pid})`);
  }
  fs.rmSync(stateFile(home), { force: true });
  try {
    await killWorkloads(home, log);
  } finally {
    fs.rmSync(stagingRootFor(home), { recursive: true, force: true });
  }
}

export interface ComponentHealth {
  component: string;
  pid: number | null;
  healthy: boolean;
  detail: string;
}

export async function status(home = defaultStackHome()): Promise<{ state: StackState | null; components: ComponentHealth[] }> {
  const state = readStackState(home);
  if (!state) return { state: null, components: [] };
  const recOf = (c: string): ProcessRecord | undefined => state.processes.find((p) => p.component === c);
  const check = async (component: string, probe: () => Promise<boolean>, detail: string): Promise<ComponentHealth> => {
    const rec = recOf(component);
    const pid = rec?.pid ?? null;
    try {
      const ok = (!rec || recordAlive(rec)) && (await probe());
      return { component, pid, healthy: ok, detail };
    } catch (e) {
      return { component, pid, healthy: false, detail: `${detail}: ${(e as Error).message}` };
    }
  };
  const components = [
    await check('temporal', () => temporalHealthy(state.temporal.address), `frontend ${state.temporal.address}`),
    await check('temporal', () => httpOk(state.temporal.uiUrl), `ui ${state.temporal.uiUrl}`),
    await check('minio', () => httpOk(`${state.s3.endpoint}/minio/health/live`), `s3 ${state.s3.endpoint} bucket ${state.s3.bucket}`),
  ];
  if (state.toxiproxy) {
    const api = state.toxiproxy.api;
    components.push(await check('toxiproxy', () => httpOk(`${api}/version`), `api ${api}`));
    for (const [link, via] of Object.entries(state.toxiproxy.routes ?? {})) {
      components.push(await check('toxiproxy', async () => {
        const res = await fetch(`${api}/proxies/${link}`, { signal: AbortSignal.timeout(2000) });
        if (!res.ok) throw new Error(`proxy '${link}' is missing (${res.status})`);
        const p = (await res.json()) as { enabled: boolean; toxics?: { name: string }[] };
        if (!p.enabled) throw new Error(`proxy '${link}' is cut (disabled)`);
        return true;
      }, `proxy ${link}: workers reach ${link} via ${via}`));
    }
  }
  for (const p of state.processes.filter((x) => !['temporal', 'minio', 'toxiproxy'].includes(x.component))) {
    components.push({ component: p.component, pid: p.pid, healthy: recordAlive(p), detail: `${p.handStarted ? 'started by hand; ' : ''}log ${p.handStarted ? '(its terminal)' : p.log}` });
  }
  return { state, components };
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

export { parseDownMs, parseStackComponent, restartComponent, type StackComponent, startComponent, stopComponent, type StopOptions } from './components';
export { findWorkloadProcesses, killWorkloads, noteNodeDir } from './workloads';
export { freePort } from './ports';
