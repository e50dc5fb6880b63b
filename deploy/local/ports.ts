import * as fs from 'node:fs';
import * as net from 'node:net';

/**
 * Ports for the local stack's services. They are picked below the kernel's ephemeral range: a port asked of
 * the kernel with bind(0) lands in that range, and every process on the machine does so (Temporal's dev server
 * picks its internal service ports that way after we chose ours), so a port we test, release and only later hand
 * to a service could be taken in between. Outside the range only a process that names the port itself can.
 */
const handedOut = new Set<number>();

function ephemeralRange(): [number, number] {
  try {
    const [lo, hi] = fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    if (Number.isInteger(lo) && Number.isInteger(hi) && lo > 0 && hi >= lo) return [lo, hi];
  } catch {
    // not Linux, or /proc is hidden: use Linux's default range
  }
  return [32768, 60999];
}

function canBind(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

/** A loopback port nothing listens on now, outside the ephemeral range, not handed out before by this process. */
export async function freePort(): Promise<number> {
  const [lo, hi] = ephemeralRange();
  // The widest stretch outside the ephemeral range, above the well-known and commonly configured ports.
  const below: [number, number] = [10000, lo - 1];
  const above: [number, number] = [hi + 1, 65535];
  const [from, to] = below[1] - below[0] >= above[1] - above[0] ? below : above;
  for (let attempt = 0; attempt < 200 && to - from > 100; attempt++) {
    const port = from + Math.floor(Math.random() * (to - from + 1));
    if (handedOut.has(port)) continue;
    if (await canBind(port)) {
      handedOut.add(port);
      return port;
    }
  }
  // No room outside the range (a machine configured so): let the kernel choose.
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (addr && typeof addr === 'object' ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

/** The text a service writes when a port it was given was taken in the meantime. */
export function isPortTaken(logText: string): boolean {
  return /address already in use|EADDRINUSE/i.test(logText);
}
