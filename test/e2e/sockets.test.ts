import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { criuDump, criuRestore, workloadFileIndex } from '../../activities/node/criu';
import { startWorkload } from '../../activities/node/process';
import { errorLines } from '../../activities/node/run-tool';
import { KybernateClient } from '../../clients/api';
import { BIN, REPO_ROOT } from '../../deploy/local/paths';
import { Agent, alive, client, localNodeContext, output, PYTHON, stack, until } from '../support/stack';

const TCP_ECHO = path.join(REPO_ROOT, 'deploy', 'workloads', 'tcp_echo.py');
let k: KybernateClient;
const agents: Agent[] = [];
const clients: LineClient[] = [];
const pids: number[] = [];

beforeAll(async () => {
  k = await client();
  agents.push(await Agent.start({ node: 'sk-a', declaredVramBytes: 8 * 2 ** 30 }));
  agents.push(await Agent.start({ node: 'sk-b', declaredVramBytes: 8 * 2 ** 30 }));
}, 120000);
afterAll(async () => {
  for (const c of clients) c.close();
  for (const p of pids) if (alive(p)) process.kill(p, 'SIGKILL');
  for (const a of agents) await a.stop();
  await k.close();
});

/** A TCP client that sends lines and collects the answers, one per request, in order. */
class LineClient {
  private buffered = '';
  private readonly lines: string[] = [];
  private failure: Error | null = null;

  private constructor(private readonly socket: net.Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => {
      this.buffered += d;
      let i: number;
      while ((i = this.buffered.indexOf('\n')) >= 0) {
        this.lines.push(this.buffered.slice(0, i));
        this.buffered = this.buffered.slice(i + 1);
      }
    });
    socket.on('error', (e) => (this.failure = e));
    socket.on('close', () => (this.failure ??= new Error('connection closed by the server')));
  }

  static connect(port: number): Promise<LineClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port }, () => {
        s.off('error', reject);
        const c = new LineClient(s);
        clients.push(c);
        resolve(c);
      });
      s.once('error', reject);
    });
  }

  send(line: string): void {
    this.socket.write(`${line}\n`);
  }

  /** The next answer; patient, since one sent while the server was checkpointed arrives on a retransmission. */
  async next(what: string, timeoutMs = 60000): Promise<string> {
    return until(
      what,
      () => {
        if (this.lines.length) return this.lines.shift();
        if (this.failure) throw this.failure;
        return null;
      },
      timeoutMs,
      50,
    );
  }

  async ask(line: string): Promise<string> {
    this.send(line);
    return this.next(`an answer to '${line}'`);
  }

  close(): void {
    this.socket.destroy();
  }
}

describe('workloads with network sockets, end to end on the real stack', () => {
  test('a TCP server checkpointed on sk-a and restored on sk-b answers on its port; the counter continues and an established connection survives', async () => {
    const w = await k.runWorkload({ node: 'sk-a', jobId: 'tcp-echo', command: [PYTHON, TCP_ECHO, '0'] });
    pids.push(w.pid);
    const port = Number(
      await until('the server listening', () => /^listening port=(\d+)/.exec(output(w.logFile)[0] ?? '')?.[1], 30000),
    );

    const kept = await LineClient.connect(port);
    expect(await kept.ask('one')).toBe('n=1 one');
    const brief = await LineClient.connect(port);
    expect(await brief.ask('two')).toBe('n=2 two');
    brief.close();
    expect(await kept.ask('three')).toBe('n=3 three');

    // Both agents run on this host: the original must be gone before the restore can take its port.
    const { request } = await k.startCheckpoint({
      target: 'tcp-echo',
      node: 'sk-a',
      checkpointId: 'tcp-echo-ck',
      vramBytes: 0,
      leaveRunning: false,
    });
    const ck = await k.checkpointResult(request.checkpointId);
    expect(ck.phase).toBe('Durable');
    expect(alive(w.pid)).toBe(false);
    // Sent while nothing listens: the network lock drops it instead of resetting the connection, and it is
    // answered on a retransmission after the restore.
    kept.send('during');

    const r = await k.startRestore({ checkpointId: request.checkpointId, node: 'sk-b' });
    const s = await k.restoreResult(r.workflowId);
    expect(s.phase).toBe('Running');
    expect(s.node).toBe('sk-b');
    expect(s.pid).not.toBe(w.pid);
    pids.push(s.pid!);

    expect(await kept.next('the answer to a request sent between dump and restore')).toBe('n=4 during');
    expect(await kept.ask('after')).toBe('n=5 after');
    const fresh = await LineClient.connect(port);
    expect(await fresh.ask('new')).toBe('n=6 new');
    expect(output(w.logFile)).toContain('served n=6');
  }, 300000);

  test("restored where a connection's local address does not exist: CRIU cannot bind it back, so it is restored closed and the server runs on", async () => {
    const dataDir = fs.mkdtempSync(path.join(stack().home, 'sockets-foreign-'));
    const ctx = localNodeContext('sk-foreign', dataDir);
    // Another host, as far as addresses go: a network namespace whose loopback has 127.0.0.1 only, so the
    // connection's local address 127.0.0.5 is not there. The real CRIU restores into it.
    const foreignCriu = path.join(dataDir, 'criu-elsewhere');
    fs.writeFileSync(
      foreignCriu,
      `#!/bin/sh
exec unshare --net sh -c 'ip link set lo up && ip addr del 127.0.0.1/8 dev lo && ip addr add 127.0.0.1/32 dev lo && exec "$0" "$@"' "${BIN.criu}" "$@"
`,
      { mode: 0o755 },
    );
    const w = await startWorkload(ctx, { jobId: 'foreign', command: [PYTHON, TCP_ECHO, '0', '0.0.0.0'] });
    pids.push(w.pid);
    const port = Number(
      await until('the server listening', () => /^listening port=(\d+)/.exec(output(w.logFile)[0] ?? '')?.[1], 30000),
    );
    const c = await new Promise<net.Socket>((resolve, reject) => {
      const sock = net.connect({ host: '127.0.0.5', port }, () => resolve(sock)).once('error', reject);
    });
    try {
      c.write('one\n');
      await until('the first answer', () => output(w.logFile).includes('served n=1'), 30000);
      // Left running, so the dump's network lock is lifted again on this host; the original then goes before
      // the restore, as after a migration.
      await criuDump(ctx, { checkpointId: 'foreign', pid: w.pid, leaveRunning: true });
      process.kill(w.pid, 'SIGKILL');
      await until('the original gone', () => !alive(w.pid), 10000);
      const dir = path.join(dataDir, 'checkpoints', 'foreign');
      const r = await criuRestore({ ...ctx, criuBin: foreignCriu }, { dir, files: workloadFileIndex(dir) });
      pids.push(r.pid);
      expect(errorLines(path.join(dir, 'criu-restore.log')).join('\n')).toMatch(
        /Can't bind inet socket back: Cannot assign requested address/,
      );
      expect(fs.existsSync(path.join(dir, 'criu-restore-tcp-close.log'))).toBe(true);
      expect(alive(r.pid)).toBe(true);
      expect(fs.readlinkSync(`/proc/${r.pid}/ns/net`)).not.toBe(fs.readlinkSync('/proc/self/ns/net'));
      // Its memory came back with it: the count it reports carries on from the request served before the dump.
      const lines = output(w.logFile).length;
      await until('the restored server reporting', () => output(w.logFile).slice(lines).includes('alive n=1'), 10000);
    } finally {
      c.destroy();
    }
  }, 120000);
});
