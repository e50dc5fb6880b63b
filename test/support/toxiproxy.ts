/** The few toxiproxy HTTP API calls the fault tests need. */
export class Toxiproxy {
  constructor(private readonly api: string) {}

  private async call(method: string, path: string, body?: unknown): Promise<unknown> {
    const res = await fetch(`${this.api}${path}`, {
      method,
      headers: { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!res.ok) throw new Error(`toxiproxy ${method} ${path}: ${res.status} ${await res.text()}`);
    return res.status === 204 ? null : res.json();
  }

  /** A proxy on a free loopback port in front of upstream (host:port); returns its listen address. */
  async create(name: string, upstream: string): Promise<string> {
    const p = (await this.call('POST', '/proxies', { name, listen: '127.0.0.1:0', upstream, enabled: true })) as {
      listen: string;
    };
    return p.listen;
  }

  async setEnabled(name: string, enabled: boolean): Promise<void> {
    await this.call('POST', `/proxies/${name}`, { enabled });
  }

  /** Limits the upstream direction (our requests, i.e. uploads) to rate KB/s. */
  async bandwidth(name: string, rateKBps: number): Promise<void> {
    await this.call('POST', `/proxies/${name}/toxics`, {
      name: 'slow-upload',
      type: 'bandwidth',
      stream: 'upstream',
      attributes: { rate: rateKBps },
    });
  }

  async removeToxic(name: string, toxic: string): Promise<void> {
    await this.call('DELETE', `/proxies/${name}/toxics/${toxic}`);
  }

  async remove(name: string): Promise<void> {
    await this.call('DELETE', `/proxies/${name}`);
  }
}
