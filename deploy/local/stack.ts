import * as fs from 'node:fs';
import * as path from 'node:path';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { ALL_SEARCH_ATTRIBUTES } from '../../common/search-attributes';
import { BIN, defaultStackHome, REPO_ROOT, stagingRootFor } from './paths';
import { startComponent } from './components';
import { killWorkloads } from './workloads';
import { freePort, isPortTaken } from './ports';
import { httpOk, temporalHealthy } from './health';
import { type ProcessRecord, readStackState, type StackState, stateFile, writeState } from './state';
import { ComponentFailedError, killGroup, recordAlive, startProcess, waitFor } from './supervise';

/**
 * The local stack's lifecycle: `up` (Temporal, MinIO, toxiproxy) and `down`. The state file is state.ts,
 * process supervision supervise.ts, health probes health.ts, workload cleanup workloads.ts; all re-exported
 * here for the modules that import them from the stack.
 */
export * from './state';
export * from './supervise';
export * from './health';
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
    if ((opts.toxiproxy || opts.proxies?.length) && !existing.toxiproxy)
      log("this stack runs without toxiproxy: 'down' first to add it");
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
      log(
        `${e.message.split('\n')[0]}: a port was taken during start-up, starting again on other ports (attempt ${attempt + 1} of 3)`,
      );
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
  const [tPort, uiPort, s3Port, consolePort, toxPort] = await Promise.all([
    freePort(),
    freePort(),
    freePort(),
    freePort(),
    freePort(),
  ]);
  const state: StackState = {
    home,
    startedAt: new Date().toISOString(),
    temporal: {
      address: `127.0.0.1:${tPort}`,
      uiUrl: `http://127.0.0.1:${uiPort}`,
      namespace: 'default',
      dbFile: path.join(home, 'temporal.sqlite'),
    },
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
      [
        BIN.temporal,
        'server',
        'start-dev',
        '--ip',
        '127.0.0.1',
        '--port',
        String(tPort),
        '--ui-port',
        String(uiPort),
        '--db-filename',
        state.temporal.dbFile,
        '--log-level',
        'warn',
        // SQLite's default rollback journal syncs every transaction several times: the dev server then stalls at a
        // few hundred writes/s (1000 agents' activity heartbeats timed out in "Slow gRPC call"s). A write-ahead log
        // synced at checkpoints keeps every commit through a crash of the server process (what our tests kill);
        // only a power loss may drop the last commits of this local, single-machine store.
        '--sqlite-pragma',
        'journal_mode=wal',
        '--sqlite-pragma',
        'synchronous=normal',
        ...saArgs,
        '--dynamic-config-value',
        'matching.useNewMatcher=true',
        '--dynamic-config-value',
        'matching.enableFairness=true',
      ],
      path.join(home, 'logs', 'temporal.log'),
    );
    processes.push(temporal);
    persist(state);
    const minio = startProcess(
      'minio',
      [
        BIN.minio,
        'server',
        state.s3.dataDir,
        '--address',
        `127.0.0.1:${s3Port}`,
        '--console-address',
        `127.0.0.1:${consolePort}`,
        '--quiet',
      ],
      path.join(home, 'logs', 'minio.log'),
      {
        MINIO_ROOT_USER: state.s3.accessKeyId,
        MINIO_ROOT_PASSWORD: state.s3.secretAccessKey,
        MINIO_BROWSER: 'on',
        MINIO_UPDATE: 'off',
      },
    );
    processes.push(minio);
    persist(state);
    if (withToxiproxy) {
      if (!fs.existsSync(BIN.toxiproxy))
        throw new ComponentFailedError('toxiproxy', `binary ${BIN.toxiproxy} is missing; run 'npm run provision'`);
      const tox = startProcess(
        'toxiproxy',
        [BIN.toxiproxy, '-host', '127.0.0.1', '-port', String(toxPort)],
        path.join(home, 'logs', 'toxiproxy.log'),
      );
      processes.push(tox);
      persist(state);
    }
    if (opts.ownerPid) {
      const wd = startProcess(
        'watchdog',
        [
          'bash',
          path.join(REPO_ROOT, 'deploy', 'local', 'watchdog.sh'),
          String(opts.ownerPid),
          stateFile(home),
          ...processes.map((p) => String(p.pid)),
        ],
        path.join(home, 'logs', 'watchdog.log'),
        { KYBERNATE_STAGING_ROOT: stagingRootFor(home) },
      );
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
      await waitFor(
        'toxiproxy',
        processes.find((p) => p.component === 'toxiproxy') ?? null,
        () => httpOk(`${api}/version`),
        30000,
      );
      state.toxiproxy.routes = await createRoutes(api, state, proxied);
      log(
        `toxiproxy up at ${api}${proxied.length ? `, routing ${proxied.map((l) => `${l} via ${state.toxiproxy?.routes?.[l]}`).join(', ')}` : ''}`,
      );
    }
    persist(state);
    return state;
  } catch (e) {
    await down({ home, log });
    throw e;
  }
}

/** The proxies named after the links they carry, on free ports; returns where workers reach each link. */
async function createRoutes(
  api: string,
  state: StackState,
  links: ProxiedLink[],
): Promise<{ s3?: string; temporal?: string }> {
  const routes: { s3?: string; temporal?: string } = {};
  for (const link of links) {
    const upstream = link === 's3' ? new URL(state.s3.endpoint).host : state.temporal.address;
    const res = await fetch(`${api}/proxies`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      signal: AbortSignal.timeout(5000),
      body: JSON.stringify({ name: link, listen: '127.0.0.1:0', upstream, enabled: true }),
    });
    if (!res.ok)
      throw new ComponentFailedError(
        'toxiproxy',
        `could not create proxy '${link}': ${res.status} ${await res.text()}`,
      );
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
    await waitFor(
      'minio-bucket',
      null,
      async () => {
        try {
          await s3.send(new CreateBucketCommand({ Bucket: state.s3.bucket }));
        } catch (e) {
          const name = (e as Error).name;
          if (name !== 'BucketAlreadyOwnedByYou' && name !== 'BucketAlreadyExists') throw e;
        }
        return true;
      },
      30000,
    );
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
  const order = [...state.processes]
    .reverse()
    .sort((a, b) => Number(a.component === 'watchdog') - Number(b.component === 'watchdog'));
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

export {
  parseDownMs,
  parseStackComponent,
  restartComponent,
  type StackComponent,
  startComponent,
  stopComponent,
  type StopOptions,
} from './components';
export { findWorkloadProcesses, killWorkloads, noteNodeDir } from './workloads';
export { freePort } from './ports';
