import { spawn } from 'node:child_process';
import * as net from 'node:net';
import { ApplicationFailure } from '@temporalio/activity';
import { ErrorType } from '../../common/errors';
import { describeReadiness, type Readiness, withDefaults } from '../../common/readiness';

export interface ProbeResult {
  ok: boolean;
  detail: string;
}

/** A TCP connect that succeeds within the timeout; the connection is closed at once. */
export function probeTcp(host: string, port: number, timeoutMs: number): Promise<ProbeResult> {
  return new Promise((resolve) => {
    const sock = net.connect({ host, port });
    const done = (r: ProbeResult): void => {
      clearTimeout(timer);
      sock.destroy();
      resolve(r);
    };
    const timer = setTimeout(
      () => done({ ok: false, detail: `tcp ${host}:${port}: no answer in ${timeoutMs} ms` }),
      timeoutMs,
    );
    sock.once('connect', () => done({ ok: true, detail: `tcp ${host}:${port}: connected` }));
    sock.once('error', (e: NodeJS.ErrnoException) =>
      done({ ok: false, detail: `tcp ${host}:${port}: ${e.code ?? e.message}` }),
    );
  });
}

/**
 * The command exits 0 within the timeout. Run without a shell, in its own process group so that a probe past
 * its timeout is killed with everything it started.
 */
export function probeExec(
  command: string[],
  timeoutMs: number,
  env: Record<string, string> = {},
): Promise<ProbeResult> {
  return new Promise((resolve) => {
    let out = '';
    let settled = false;
    const child = spawn(command[0], command.slice(1), {
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
      env: { ...process.env, ...env },
    });
    const keep = (d: Buffer): void => {
      if (out.length < 512) out += d.toString();
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    const done = (r: ProbeResult): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(r);
    };
    const name = JSON.stringify(command);
    const timer = setTimeout(() => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
      } catch {
        /* exited meanwhile */
      }
      done({ ok: false, detail: `exec ${name}: no exit in ${timeoutMs} ms` });
    }, timeoutMs);
    child.once('error', (e) => done({ ok: false, detail: `exec ${name}: ${e.message}` }));
    child.once('close', (code, signal) =>
      done(
        code === 0
          ? { ok: true, detail: `exec ${name}: exit 0` }
          : {
              ok: false,
              detail: `exec ${name}: exit ${code ?? signal}${out.trim() ? `: ${out.trim().slice(0, 200)}` : ''}`,
            },
      ),
    );
  });
}

export function probeOnce(r: Readiness, env: Record<string, string> = {}): Promise<ProbeResult> {
  const timeoutMs = withDefaults(r).timeoutSeconds * 1000;
  return 'tcpSocket' in r
    ? probeTcp(r.tcpSocket.host ?? '127.0.0.1', r.tcpSocket.port, timeoutMs)
    : probeExec(r.exec.command, timeoutMs, env);
}

/**
 * Probes until one passes, as a Kubernetes readiness probe: after initialDelaySeconds, every periodSeconds,
 * failing (NotReady) after failureThreshold failures in a row. Before each probe `notRunning` may name a reason
 * the workload cannot become ready any more (gone, stopped): that ends it at once.
 */
export async function waitReady(
  r: Readiness,
  opts: {
    notRunning: () => ApplicationFailure | null;
    env?: Record<string, string>;
    sleep?: (ms: number) => Promise<void>;
  },
): Promise<{ probes: number; afterMs: number; detail: string }> {
  const p = withDefaults(r);
  const sleep = opts.sleep ?? ((ms: number) => new Promise<void>((res) => setTimeout(res, ms)));
  const started = Date.now();
  await sleep(p.initialDelaySeconds * 1000);
  let failures = 0;
  for (let probes = 1; ; probes++) {
    const gone = opts.notRunning();
    if (gone) throw gone;
    const t0 = Date.now();
    const res = await probeOnce(r, opts.env);
    if (res.ok) return { probes, afterMs: Date.now() - started, detail: res.detail };
    if (++failures >= p.failureThreshold) {
      throw ApplicationFailure.nonRetryable(
        `readiness probe (${describeReadiness(r)}) failed ${failures} times in a row; last: ${res.detail}`,
        ErrorType.NotReady,
      );
    }
    await sleep(Math.max(0, p.periodSeconds * 1000 - (Date.now() - t0)));
  }
}
