import { Connection } from '@temporalio/client';
import { defaultStackHome } from './paths';
import { type ProcessRecord, readStackState, type StackState } from './state';
import { recordAlive } from './supervise';

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

export interface ComponentHealth {
  component: string;
  pid: number | null;
  healthy: boolean;
  detail: string;
}

export async function status(
  home = defaultStackHome(),
): Promise<{ state: StackState | null; components: ComponentHealth[] }> {
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
    await check(
      'minio',
      () => httpOk(`${state.s3.endpoint}/minio/health/live`),
      `s3 ${state.s3.endpoint} bucket ${state.s3.bucket}`,
    ),
  ];
  if (state.toxiproxy) {
    const api = state.toxiproxy.api;
    components.push(await check('toxiproxy', () => httpOk(`${api}/version`), `api ${api}`));
    for (const [link, via] of Object.entries(state.toxiproxy.routes ?? {})) {
      components.push(
        await check(
          'toxiproxy',
          async () => {
            const res = await fetch(`${api}/proxies/${link}`, { signal: AbortSignal.timeout(2000) });
            if (!res.ok) throw new Error(`proxy '${link}' is missing (${res.status})`);
            const p = (await res.json()) as { enabled: boolean; toxics?: { name: string }[] };
            if (!p.enabled) throw new Error(`proxy '${link}' is cut (disabled)`);
            return true;
          },
          `proxy ${link}: workers reach ${link} via ${via}`,
        ),
      );
    }
  }
  for (const p of state.processes.filter((x) => !['temporal', 'minio', 'toxiproxy'].includes(x.component))) {
    components.push({
      component: p.component,
      pid: p.pid,
      healthy: recordAlive(p),
      detail: `${p.handStarted ? 'started by hand; ' : ''}log ${p.handStarted ? '(its terminal)' : p.log}`,
    });
  }
  return { state, components };
}
