import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import type { ApplicationFailure } from '@temporalio/activity';
import pino from 'pino';
import type { NodeContext } from '../../activities/node/context';
import { appendJournal } from '../../activities/node/journal';
import { processIdentity } from '../../activities/node/process';
import { probeExec, probeTcp, waitReady } from '../../activities/node/readiness';
import { CRIU_RESTORE_STEP, inspectRestore } from '../../activities/node/restore-attempt';
import { verifyRunning } from '../../activities/node/verify';
import { parseReadiness } from '../../common/readiness';

const listen = (): Promise<net.Server> =>
  new Promise((res) => {
    const srv = net.createServer((s) => s.end());
    srv.listen(0, '127.0.0.1', () => res(srv));
  });
const portOf = (srv: net.Server): number => (srv.address() as net.AddressInfo).port;
const close = (srv: net.Server): Promise<void> => new Promise((res) => srv.close(() => res()));

/** A port nothing listens on: bound, noted, closed. */
async function deadPort(): Promise<number> {
  const srv = await listen();
  const port = portOf(srv);
  await close(srv);
  return port;
}

const kids: ChildProcess[] = [];
/** An idle process: it sleeps, using no CPU at all. */
function idle(): ChildProcess {
  const c = spawn('sleep', ['60'], { stdio: 'ignore' });
  kids.push(c);
  return c;
}
afterAll(() => {
  for (const c of kids) c.kill('SIGKILL');
});

const failureType = (e: unknown): string | undefined => (e as ApplicationFailure).type ?? undefined;

describe('readiness probes', () => {
  test('tcpSocket: a real listener answers; a closed port does not', async () => {
    const srv = await listen();
    try {
      expect(await probeTcp('127.0.0.1', portOf(srv), 1000)).toMatchObject({ ok: true });
    } finally {
      await close(srv);
    }
    const r = await probeTcp('127.0.0.1', await deadPort(), 1000);
    expect(r.ok).toBe(false);
    expect(r.detail).toMatch(/ECONNREFUSED/);
  });

  test('exec: exit 0 passes, exit 1 fails, a command past its timeout is killed and fails', async () => {
    expect(await probeExec(['/bin/sh', '-c', 'exit 0'], 2000)).toMatchObject({ ok: true });
    const one = await probeExec(['/bin/sh', '-c', 'echo not yet; exit 1'], 2000);
    expect(one).toMatchObject({ ok: false });
    expect(one.detail).toMatch(/exit 1: not yet/);
    const started = Date.now();
    const slow = await probeExec(['sleep', '30'], 300);
    expect(slow.ok).toBe(false);
    expect(slow.detail).toMatch(/no exit in 300 ms/);
    expect(Date.now() - started).toBeLessThan(5000);
    expect((await probeExec(['/no/such/probe'], 1000)).ok).toBe(false);
  });

  test('exec probes see the restored pid in KYBERNATE_PID', async () => {
    expect(
      (await probeExec(['/bin/sh', '-c', 'test "$KYBERNATE_PID" = 4242'], 2000, { KYBERNATE_PID: '4242' })).ok,
    ).toBe(true);
  });

  test('waitReady: fails with NotReady after failureThreshold failures in a row', async () => {
    const port = await deadPort();
    let probes = 0;
    const err = await waitReady(
      { tcpSocket: { port }, periodSeconds: 0.05, failureThreshold: 3 },
      {
        notRunning: () => {
          probes++;
          return null;
        },
      },
    ).catch((e: unknown) => e);
    expect(failureType(err)).toBe('NotReady');
    expect((err as Error).message).toMatch(/failed 3 times in a row; last: tcp 127\.0\.0\.1:\d+: ECONNREFUSED/);
    expect(probes).toBe(3);
  });

  test('waitReady: a workload that starts listening after two failed probes is ready at the third', async () => {
    const port = await deadPort();
    let srv: net.Server | null = null;
    let n = 0;
    const r = await waitReady(
      { tcpSocket: { port }, periodSeconds: 0.1, failureThreshold: 5 },
      {
        notRunning: () => null,
        sleep: async (ms) => {
          if (++n === 3 && !srv)
            srv = await new Promise<net.Server>((res) => {
              const s = net.createServer();
              s.listen(port, '127.0.0.1', () => res(s));
            });
          await new Promise((res) => setTimeout(res, ms));
        },
      },
    );
    expect(r.probes).toBe(3);
    if (srv) await close(srv);
  });

  test('waitReady stops at once when the process is gone', async () => {
    const err = await waitReady(
      { exec: { command: ['true'] } },
      {
        notRunning: () =>
          Object.assign(new Error('no such process: pid 1'), {
            type: 'NoSuchProcess',
          }) as unknown as ApplicationFailure,
      },
    ).catch((e: unknown) => e);
    expect(failureType(err)).toBe('NoSuchProcess');
  });

  test('parseReadiness names the field that is wrong', () => {
    expect(parseReadiness({ tcpSocket: { port: 80 }, periodSeconds: 2 })).toEqual({
      tcpSocket: { port: 80 },
      periodSeconds: 2,
    });
    expect(() => parseReadiness({ tcpSocket: { port: 0 } })).toThrow(/^readiness\.tcpSocket\.port: /);
    expect(() => parseReadiness({ exec: { command: [] } })).toThrow(/^readiness\.exec\.command: /);
    expect(() => parseReadiness({ exec: { command: ['x'] }, failureThreshold: 0 })).toThrow(
      /^readiness\.failureThreshold: /,
    );
    expect(() => parseReadiness({ httpGet: { path: '/' } })).toThrow(/^readiness: needs either tcpSocket/);
    expect(() => parseReadiness('6379')).toThrow(/^readiness: /);
  });
});

describe('verifyRunning', () => {
  const ctx = { node: 'n1', logger: pino({ level: 'silent' }) } as unknown as NodeContext;

  test('an idle process (no CPU at all) without a probe is running', async () => {
    const c = idle();
    const id = processIdentity(c.pid!)!;
    const r = await verifyRunning(ctx, { pid: id.pid, startTime: id.startTime, settleMs: 300 });
    expect(r.state).toBe('S');
    expect(r.cuda).toBe('none');
  });

  test('with a probe: ready when it passes, NotReady when it keeps failing', async () => {
    const c = idle();
    const id = processIdentity(c.pid!)!;
    const srv = await listen();
    try {
      const ok = await verifyRunning(ctx, { ...id, readiness: { tcpSocket: { port: portOf(srv) } } });
      expect(ok.probes).toBe(1);
    } finally {
      await close(srv);
    }
    const err = await verifyRunning(ctx, {
      ...id,
      readiness: { exec: { command: ['/bin/sh', '-c', 'exit 1'] }, periodSeconds: 0.05, failureThreshold: 2 },
    }).catch((e: unknown) => e);
    expect(failureType(err)).toBe('NotReady');
  });

  test('a stopped process is not running; a gone one, or a pid now naming another process, is NoSuchProcess', async () => {
    const c = idle();
    const id = processIdentity(c.pid!)!;
    process.kill(id.pid, 'SIGSTOP');
    for (
      let i = 0;
      i < 50 && processIdentity(id.pid) && !/\) T /.test(fs.readFileSync(`/proc/${id.pid}/stat`, 'utf8'));
      i++
    )
      await new Promise((r) => setTimeout(r, 20));
    expect(failureType(await verifyRunning(ctx, { ...id, settleMs: 10 }).catch((e: unknown) => e))).toBe('NotRunning');
    expect(
      failureType(
        await verifyRunning(ctx, { pid: id.pid, startTime: id.startTime + 1, settleMs: 10 }).catch((e: unknown) => e),
      ),
    ).toBe('NoSuchProcess');
    c.kill('SIGKILL');
    await new Promise((r) => c.once('exit', r));
    expect(failureType(await verifyRunning(ctx, { ...id, settleMs: 10 }).catch((e: unknown) => e))).toBe(
      'NoSuchProcess',
    );
  });

  test('a malformed probe is InvalidInput naming the field', async () => {
    const c = idle();
    const err = await verifyRunning(ctx, { pid: c.pid!, readiness: { tcpSocket: { port: 'redis' } } }).catch(
      (e: unknown) => e,
    );
    expect(failureType(err)).toBe('InvalidInput');
    expect((err as Error).message).toMatch(/^readiness\.tcpSocket\.port: /);
  });
});

describe('inspectRestore: what became of a restore whose agent was lost', () => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kyb-inspect-'));
  const ctx = { node: 'n1', dataDir, stagingDir: null, logger: pino({ level: 'silent' }) } as unknown as NodeContext;
  const ckDir = path.join(dataDir, 'checkpoints', 'ck1');
  fs.mkdirSync(ckDir, { recursive: true });
  afterAll(() => fs.rmSync(dataDir, { recursive: true, force: true }));

  /** A 'started' record written by an agent that is gone (a pid no process has). */
  function startedByDeadAgent(attemptId: string, at: string): void {
    const file = path.join(dataDir, 'journal', 'restore', `${attemptId}.jsonl`);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.appendFileSync(
      file,
      JSON.stringify({
        step: CRIU_RESTORE_STEP,
        state: 'started',
        at,
        agentPid: 4194304,
        data: { checkpointId: 'ck1', dir: ckDir },
      }) + '\n',
    );
  }

  test('never started: nothing runs', async () => {
    expect(await inspectRestore(ctx, { checkpointId: 'ck1', attemptId: 'ck1.r1.a1' })).toMatchObject({
      criu: 'never',
      process: null,
      running: false,
    });
  });

  test('done: the process recorded by pid and start time, running', async () => {
    const c = idle();
    const id = processIdentity(c.pid!)!;
    appendJournal(ctx, 'restore', 'ck1.r1.a2', { step: CRIU_RESTORE_STEP, state: 'started', data: { dir: ckDir } });
    appendJournal(ctx, 'restore', 'ck1.r1.a2', { step: CRIU_RESTORE_STEP, state: 'done', data: { ...id } });
    expect(await inspectRestore(ctx, { checkpointId: 'ck1', attemptId: 'ck1.r1.a2' })).toEqual({
      criu: 'done',
      failure: null,
      process: id,
      running: true,
      state: 'S',
      cuda: 'none',
    });
    c.kill('SIGKILL');
    await new Promise((r) => c.once('exit', r));
    expect(await inspectRestore(ctx, { checkpointId: 'ck1', attemptId: 'ck1.r1.a2' })).toMatchObject({
      criu: 'done',
      process: id,
      running: false,
    });
  });

  test('interrupted (agent died mid-CRIU): the pid file names the process, taken only if it started after the step', async () => {
    const c = idle();
    const id = processIdentity(c.pid!)!;
    fs.writeFileSync(path.join(ckDir, 'restored.pid'), String(id.pid));
    startedByDeadAgent('ck1.r1.a3', new Date(Date.now() - 60000).toISOString());
    expect(await inspectRestore(ctx, { checkpointId: 'ck1', attemptId: 'ck1.r1.a3' })).toMatchObject({
      criu: 'interrupted',
      process: id,
      running: true,
    });
    // A step that started after this process did: the pid file is stale or the pid reused, not our process.
    startedByDeadAgent('ck1.r1.a4', new Date(Date.now() + 60000).toISOString());
    expect(await inspectRestore(ctx, { checkpointId: 'ck1', attemptId: 'ck1.r1.a4' })).toMatchObject({
      criu: 'interrupted',
      process: null,
      running: false,
    });
  });

  test("failed: the journal's error is reported", async () => {
    fs.rmSync(path.join(ckDir, 'restored.pid'), { force: true }); // as criuRestore does before CRIU runs; a failed CRIU writes none
    appendJournal(ctx, 'restore', 'ck1.r1.a5', { step: CRIU_RESTORE_STEP, state: 'started', data: { dir: ckDir } });
    appendJournal(ctx, 'restore', 'ck1.r1.a5', {
      step: CRIU_RESTORE_STEP,
      state: 'failed',
      data: { type: 'CriuPidConflict', message: 'pid busy' },
    });
    expect(await inspectRestore(ctx, { checkpointId: 'ck1', attemptId: 'ck1.r1.a5' })).toMatchObject({
      criu: 'failed',
      failure: { type: 'CriuPidConflict', message: 'pid busy' },
      process: null,
      running: false,
    });
  });

  test('CRIU killed after it resumed the process (CriuInterrupted): the pid file still names it', async () => {
    const c = idle();
    const id = processIdentity(c.pid!)!;
    fs.writeFileSync(path.join(ckDir, 'restored.pid'), String(id.pid));
    const file = path.join(dataDir, 'journal', 'restore', 'ck1.r1.a6.jsonl');
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.appendFileSync(
      file,
      [
        {
          step: CRIU_RESTORE_STEP,
          state: 'started',
          at: new Date(Date.now() - 60000).toISOString(),
          agentPid: process.pid,
          data: { dir: ckDir },
        },
        {
          step: CRIU_RESTORE_STEP,
          state: 'failed',
          at: new Date().toISOString(),
          agentPid: process.pid,
          data: { type: 'CriuInterrupted', message: 'killed by SIGKILL' },
        },
      ]
        .map((e) => JSON.stringify(e))
        .join('\n') + '\n',
    );
    expect(await inspectRestore(ctx, { checkpointId: 'ck1', attemptId: 'ck1.r1.a6' })).toMatchObject({
      criu: 'failed',
      failure: { type: 'CriuInterrupted' },
      process: id,
      running: true,
    });
  });

  test('rejects an unsafe attempt id before touching anything', async () => {
    await expect(inspectRestore(ctx, { checkpointId: 'ck1', attemptId: '../x' })).rejects.toThrow(/^attemptId: /);
  });
});
