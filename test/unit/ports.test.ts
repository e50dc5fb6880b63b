import * as fs from 'node:fs';
import * as net from 'node:net';
import { freePort, isPortTaken } from '../../deploy/local/ports';

describe('local stack ports', () => {
  const [lo, hi] = fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);

  it('picks distinct ports outside the kernel ephemeral range, each one bindable', async () => {
    const ports = await Promise.all(Array.from({ length: 20 }, () => freePort()));
    expect(new Set(ports).size).toBe(ports.length);
    for (const port of ports) {
      expect(port >= lo && port <= hi).toBe(false);
      await new Promise<void>((resolve, reject) => {
        const srv = net.createServer();
        srv.once('error', reject);
        srv.listen(port, '127.0.0.1', () => srv.close(() => resolve()));
      });
    }
  });

  it('recognises the bind failures that Temporal (Go) and Node services print', () => {
    expect(isPortTaken('{"level":"FATAL","message":"listen tcp 127.0.0.1:40493: bind: address already in use"}')).toBe(
      true,
    );
    expect(isPortTaken('Error: listen EADDRINUSE: address already in use 127.0.0.1:9000')).toBe(true);
    expect(isPortTaken('process 20424 exited during start-up\nno such file')).toBe(false);
  });
});
