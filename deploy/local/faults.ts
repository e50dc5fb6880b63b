import { InvalidInputError } from '../../common/ids';
import { type ProxiedLink, readStackState } from './stack';

/** The links `up --toxiproxy [--proxy-temporal]` routes through proxies. */
export function proxiedLinks(o: { toxiproxy?: boolean; proxyTemporal?: boolean }): ProxiedLink[] {
  if (o.proxyTemporal && !o.toxiproxy) throw new InvalidInputError('proxy-temporal', 'needs --toxiproxy');
  return o.toxiproxy ? (o.proxyTemporal ? ['s3', 'temporal'] : ['s3']) : [];
}

/**
 * One toxiproxy call per fault on a link that `up --toxiproxy` routed workers through (proxy `s3`, and
 * `temporal` with --proxy-temporal): the same calls a fault test makes, from the command line.
 */
export async function setFault(home: string, link: string, action: string, value?: string): Promise<string> {
  const state = readStackState(home);
  if (!state) throw new Error(`no stack state in ${home}; run 'kybernate up --toxiproxy' first`);
  if (!state.toxiproxy) throw new Error("this stack has no toxiproxy; start it with 'kybernate up --toxiproxy'");
  const routes = state.toxiproxy.routes ?? {};
  if (!Object.keys(routes).includes(link)) {
    throw new InvalidInputError(
      'link',
      `'${link}' is not routed through toxiproxy in this stack (routed: ${Object.keys(routes).join(', ') || 'none'})`,
    );
  }
  const api = state.toxiproxy.api;
  const call = async (method: string, path: string, body?: unknown): Promise<Response> => {
    const res = await fetch(`${api}${path}`, {
      method,
      headers: { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(5000),
    });
    if (!res.ok && !(method === 'DELETE' && res.status === 404))
      throw new Error(`toxiproxy ${method} ${path}: ${res.status} ${await res.text()}`);
    return res;
  };
  const number = (what: string): number => {
    const n = Number(value);
    if (value === undefined || !Number.isInteger(n) || n < 0)
      throw new InvalidInputError(what, `must be a whole number >= 0 (got '${value ?? ''}')`);
    return n;
  };
  // One toxic of each kind, replaced by the next call: `latency 500` then `latency 50` means 50.
  const toxic = async (
    name: string,
    type: string,
    stream: string,
    attributes: Record<string, number>,
  ): Promise<void> => {
    await call('DELETE', `/proxies/${link}/toxics/${name}`);
    await call('POST', `/proxies/${link}/toxics`, { name, type, stream, toxicity: 1, attributes });
  };
  switch (action) {
    case 'down':
      await call('POST', `/proxies/${link}`, { enabled: false });
      return `${link} cut: connections through ${routes[link as 's3' | 'temporal']} are refused`;
    case 'up':
      await call('POST', `/proxies/${link}`, { enabled: true });
      return `${link} restored`;
    case 'latency': {
      const ms = number('latency');
      await toxic('kybernate-latency', 'latency', 'downstream', { latency: ms, jitter: 0 });
      return `${link}: ${ms} ms added to every answer`;
    }
    case 'bandwidth': {
      const rate = number('bandwidth');
      await toxic('kybernate-bandwidth', 'bandwidth', 'upstream', { rate });
      return `${link}: requests (uploads) limited to ${rate} KB/s`;
    }
    case 'reset': {
      const p = (await (await call('GET', `/proxies/${link}`)).json()) as { toxics?: { name: string }[] };
      for (const t of p.toxics ?? []) await call('DELETE', `/proxies/${link}/toxics/${t.name}`);
      await call('POST', `/proxies/${link}`, { enabled: true });
      return `${link}: no faults`;
    }
    default:
      throw new InvalidInputError('action', `'${action}' is none of down, up, latency <ms>, bandwidth <KB/s>, reset`);
  }
}
