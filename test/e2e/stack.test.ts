import { execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { criuDump, criuRestore, workloadFileIndex } from '../../activities/node/criu';
import { startWorkload } from '../../activities/node/process';
import { makeS3Client } from '../../activities/s3-client';
import { REPO_ROOT } from '../../deploy/local/paths';
import { Client, Connection } from '@temporalio/client';
import type { NodeInventory } from '../../activities/node/inventory';
import { CONTROL_QUEUE, nodeWorkflowId } from '../../common/queues';
import type { ChildProcess } from 'node:child_process';
import { ALL_SEARCH_ATTRIBUTES } from '../../common/search-attributes';
import { KybernateClient } from '../../clients/api';
import { nodeQueue } from '../../common/queues';
import {
  ComponentFailedError,
  configFromStack,
  down,
  findWorkloadProcesses,
  readStackState,
  restartComponent,
  type StackState,
  stopComponent,
  up,
} from '../../deploy/local/stack';
import { hasPoller, startAgent, startControlWorker } from '../../deploy/local/workers';
import { loadConfig } from '../../workers/config';
import { localDefaults } from '../../deploy/local/config';
import type { NodeRecord } from '../../common/node';
import {
  Agent,
  alive,
  client,
  lastTick,
  localNodeContext,
  output,
  PATTERN,
  PYTHON,
  stack,
  until,
} from '../support/stack';
import { Toxiproxy } from '../support/toxiproxy';

const CLI = path.join(REPO_ROOT, 'dist', 'clients', 'cli.js');

/** A process's argv, NUL-separated; '' once it is gone. */
function cmdline(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch {
    return '';
  }
}

describe('the local stack', () => {
  test('kybernate status reports every component healthy and the UI URL', () => {
    const out = execFileSync(process.execPath, [CLI, 'status'], {
      env: { ...process.env, KYBERNATE_HOME: stack().home },
      encoding: 'utf8',
    });
    for (const c of ['temporal', 'minio', 'toxiproxy', 'control-worker'])
      expect(out).toMatch(new RegExp(`healthy +${c}`));
    expect(out).not.toContain('UNHEALTHY');
    expect(out).toContain(`Temporal UI: ${stack().temporal.uiUrl}`);
  });

  test('the Temporal Web UI answers', async () => {
    const res = await fetch(stack().temporal.uiUrl);
    expect(res.status).toBe(200);
    expect(await res.text()).toContain('<html');
  });

  test('a workflow runs through a real worker: the agent starts a real process', async () => {
    const agent = await Agent.start({ node: 'smoke' });
    const k = await client();
    try {
      const info = await k.runWorkload({ node: 'smoke', jobId: 'smoke-sleep', command: ['/bin/sleep', '300'] });
      expect(alive(info.pid)).toBe(true);
      // Detached: own session, so an agent crash does not take it along.
      const stat = fs.readFileSync(`/proc/${info.pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      expect(Number(fields[3])).toBe(info.pid); // session id
      agent.kill9();
      await until('agent exit', () => !alive(agent.rec.pid), 10000);
      expect(alive(info.pid)).toBe(true);
      process.kill(info.pid, 'SIGKILL');
    } finally {
      await k.close();
      await agent.stop();
    }
  });

  test('an object is written to and read back from MinIO with @aws-sdk/client-s3', async () => {
    const s3 = makeS3Client(configFromStack(stack()).s3);
    try {
      const body = `hello ${Date.now()}`;
      await s3.send(new PutObjectCommand({ Bucket: stack().s3.bucket, Key: 'smoke/object.txt', Body: body }));
      const got = await s3.send(new GetObjectCommand({ Bucket: stack().s3.bucket, Key: 'smoke/object.txt' }));
      expect(await got.Body!.transformToString()).toBe(body);
    } finally {
      s3.destroy();
    }
  });

  test('CRIU dumps a real process holding a known pattern and restores it: pattern intact, still running', async () => {
    const dataDir = fs.mkdtempSync(path.join(stack().home, 'criu-smoke-'));
    const ctx = localNodeContext('criu-smoke', dataDir);
    const log = path.join(dataDir, 'pattern.log');
    const fd = fs.openSync(log, 'a');
    const child = spawn(PYTHON, [PATTERN, '64', 'criu-smoke'], { detached: true, stdio: ['ignore', fd, fd] });
    fs.closeSync(fd);
    child.unref();
    const pid = child.pid!;
    try {
      await until('pattern ticks', () => lastTick(log) >= 3, 20000);
      const dump = await criuDump(ctx, { checkpointId: 'smoke', pid, leaveRunning: false });
      expect(dump.imageBytes).toBeGreaterThan(64 << 20);
      await until('dumped process gone', () => !alive(pid), 5000);
      const before = lastTick(log);
      const ckDir = path.join(dataDir, 'checkpoints', 'smoke');
      const restored = await criuRestore(ctx, { dir: ckDir, files: workloadFileIndex(ckDir) });
      expect(restored.pid).toBe(pid);
      // SIGUSR1 makes it re-hash its 64 MiB: the pattern must have survived the round trip.
      process.kill(pid, 'SIGUSR1');
      const verify = await until(
        'verification after restore',
        () => output(log).find((l) => l.startsWith('verify ')),
        20000,
      );
      expect(verify).toContain('pattern_ok=True');
      await until('ticks continue after the dumped counter', () => lastTick(log) >= before + 3, 20000);
      expect(output(log).filter((l) => l === `tick ${before + 1}`)).toHaveLength(1);
      expect(alive(pid)).toBe(true);
    } finally {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  });

  test('a component that cannot start fails fast, named, and nothing is left running', async () => {
    const home = fs.mkdtempSync(path.join(os.tmpdir(), 'kybernate-broken-'));
    // Temporal cannot open a database file that is a directory.
    fs.mkdirSync(path.join(home, 'temporal.sqlite'));
    const err = await up({ home, log: () => undefined }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ComponentFailedError);
    expect((err as ComponentFailedError).component).toBe('temporal');
    expect(readStackState(home)).toBeNull();
    fs.rmSync(home, { recursive: true, force: true });
  });

  test('down stops every process; a dead owner takes its stack along (no orphans after Ctrl-C or a crash)', async () => {
    const home = fs.mkdtempSync(path.join(os.tmpdir(), 'kybernate-owned-'));
    const owner = spawn('/bin/sleep', ['600'], { stdio: 'ignore' });
    try {
      const s = await up({ home, ownerPid: owner.pid, log: () => undefined });
      // An agent registered after the watchdog started must go too.
      const agent = await startAgent(s, { node: 'owned' });
      // And a component restarted since: the watchdog follows the state file, not the pids it was started with.
      const temporal = await restartComponent(home, 'temporal');
      const pids = readStackState(home)!.processes.map((p) => p.pid);
      expect(pids).toEqual(expect.arrayContaining([agent.pid, temporal.pid]));
      expect(pids).not.toContain(s.processes.find((p) => p.component === 'temporal')!.pid);
      // A workload of that node that exec'd away from its environment, with a child: the watchdog finds both.
      const wl = await startWorkload(localNodeContext('owned', path.join(home, 'nodes', 'owned')), {
        jobId: 'orphan',
        command: ['/bin/sh', '-c', 'sleep 1003 & exec env -i /bin/sleep 1004'],
      });
      // wl.pid is the namespace's pid 1 (an init such as tini, or the workload itself without one).
      const ns = fs.readlinkSync(`/proc/${wl.pid}/ns/pid`);
      const inNs = (): number[] =>
        fs
          .readdirSync('/proc')
          .filter((n) => /^\d+$/.test(n))
          .map(Number)
          .filter((p) => {
            try {
              return fs.readlinkSync(`/proc/${p}/ns/pid`) === ns && alive(p);
            } catch {
              return false;
            }
          });
      await until(
        "exec'd, with its child",
        () => ['/bin/sleep\x001004', 'sleep\x001003'].every((c) => inNs().some((p) => cmdline(p).startsWith(c))),
        10000,
      );
      expect(pids.every(alive)).toBe(true);
      owner.kill('SIGKILL');
      await until('watchdog stops the stack', () => pids.every((p) => !alive(p)), 20000);
      await until('and the workload with its child', () => inNs().length === 0, 10000);
      expect(readStackState(home)).toBeNull();

      const s2 = await up({ home, log: () => undefined });
      await down({ home, log: () => undefined });
      expect(s2.processes.map((p) => p.pid).some(alive)).toBe(false);
    } finally {
      // A failure above must not leave the stack (its watchdog stops it once the owner is gone) nor keep jest alive.
      owner.kill('SIGKILL');
      await until('the watchdog is done', () => readStackState(home) === null, 30000).catch(() =>
        down({ home, log: () => undefined }),
      );
      fs.rmSync(home, { recursive: true, force: true });
    }
  });

  test('up on a stack whose Temporal died starts only Temporal again, on its port with its data; the rest runs on', async () => {
    const home = fs.mkdtempSync(path.join(os.tmpdir(), 'kybernate-again-'));
    try {
      const s = await up({ home, log: () => undefined });
      const minio = s.processes.find((p) => p.component === 'minio')!.pid;
      const conn = await Connection.connect({ address: s.temporal.address });
      await new Client({ connection: conn, namespace: s.temporal.namespace }).workflow.start('nobodyRunsThis', {
        workflowId: 'survivor',
        taskQueue: 'nobody-polls',
      });
      await conn.close();
      await stopComponent(home, 'temporal');
      const again = await up({ home, log: () => undefined });
      expect(again.temporal.address).toBe(s.temporal.address);
      expect(again.processes.find((p) => p.component === 'minio')!.pid).toBe(minio);
      expect(alive(again.processes.find((p) => p.component === 'temporal')!.pid)).toBe(true);
      const conn2 = await Connection.connect({ address: again.temporal.address });
      try {
        expect(
          (
            await new Client({ connection: conn2, namespace: s.temporal.namespace }).workflow
              .getHandle('survivor')
              .describe()
          ).status.name,
        ).toBe('RUNNING');
      } finally {
        await conn2.close();
      }
    } finally {
      await down({ home, log: () => undefined });
      fs.rmSync(home, { recursive: true, force: true });
    }
  });

  describe('restartComponent: one service crashes and comes back on its port with its data', () => {
    const pidOf = (component: string): number => stack().processes.find((p) => p.component === component)!.pid;
    const inventory = (zone: string): NodeInventory => ({
      node: 'restart-probe',
      zone,
      vramSource: 'none',
      gpus: [],
      totalVramBytes: 0,
      freeVramBytes: 0,
      freeDiskBytes: 0,
      criuVersion: 'n/a',
      reportedAt: new Date().toISOString(),
    });
    async function withTemporal<T>(fn: (c: Client) => Promise<T>): Promise<T> {
      const connection = await Connection.connect({ address: stack().temporal.address });
      try {
        return await fn(new Client({ connection, namespace: stack().temporal.namespace }));
      } finally {
        await connection.close();
      }
    }

    test('Temporal SIGKILLed and restarted: a workflow started before is still there, and the control worker carries on with it', async () => {
      const wfId = nodeWorkflowId('restart-probe');
      await withTemporal(async (c) => {
        await c.workflow.signalWithStart('nodeRegistry', {
          workflowId: wfId,
          taskQueue: CONTROL_QUEUE,
          args: [{ node: 'restart-probe' }],
          signal: 'report',
          signalArgs: [inventory('before-restart')],
        });
        await until(
          'the report is in',
          async () =>
            (await c.workflow.getHandle(wfId).query<NodeRecord>('status')).inventory?.zone === 'before-restart',
          30000,
        );
      });
      const before = stack();
      const oldPid = pidOf('temporal');
      const rec = await restartComponent(before.home, 'temporal');
      expect(alive(oldPid)).toBe(false);
      expect(rec.pid).not.toBe(oldPid);
      expect(pidOf('temporal')).toBe(rec.pid);
      expect(stack().temporal).toEqual(before.temporal);
      await withTemporal(async (c) => {
        const h = c.workflow.getHandle(wfId);
        const d = await h.describe();
        expect(d.status.name).toBe('RUNNING');
        expect(d.searchAttributes.KybernateNode).toEqual(['restart-probe']);
        // Our search attributes are still registered (the UI filters by them).
        const sa = await c.connection.operatorService.listSearchAttributes({ namespace: stack().temporal.namespace });
        for (const k of ALL_SEARCH_ATTRIBUTES) expect(Object.keys(sa.customAttributes ?? {})).toContain(k.name);
        // The control worker reconnected on its own: it answers for the workflow and takes a new signal.
        await until(
          'control worker polls again',
          () => hasPoller(stack().temporal.address, stack().temporal.namespace, CONTROL_QUEUE, 'workflow'),
          60000,
        );
        expect((await h.query<NodeRecord>('status')).inventory?.zone).toBe('before-restart');
        await h.signal('report', inventory('after-restart'));
        await until(
          'the report after the restart is in',
          async () => (await h.query<NodeRecord>('status')).inventory?.zone === 'after-restart',
          60000,
        );
        await h.terminate('restart test done');
      });
    });

    test('MinIO SIGTERMed, down a while, restarted: an object written before is read back', async () => {
      const key = `restart/${Date.now()}.txt`;
      const s3Before = makeS3Client(configFromStack(stack()).s3);
      try {
        await s3Before.send(new PutObjectCommand({ Bucket: stack().s3.bucket, Key: key, Body: 'before the restart' }));
      } finally {
        s3Before.destroy();
      }
      const oldPid = pidOf('minio');
      const rec = await restartComponent(stack().home, 'minio', { signal: 'SIGTERM', downMs: 1000 });
      expect(alive(oldPid)).toBe(false);
      expect(pidOf('minio')).toBe(rec.pid);
      const s3 = makeS3Client(configFromStack(stack()).s3);
      try {
        const got = await s3.send(new GetObjectCommand({ Bucket: stack().s3.bucket, Key: key }));
        expect(await got.Body!.transformToString()).toBe('before the restart');
      } finally {
        s3.destroy();
      }
    });

    test('toxiproxy restarted: its proxies come back on the same listen address, cut or not', async () => {
      const tox = new Toxiproxy(stack().toxiproxy!.api);
      const upstream = new URL(stack().s3.endpoint).host;
      const listen = await tox.create('restart-probe', upstream);
      await tox.setEnabled('restart-probe', false);
      try {
        await restartComponent(stack().home, 'toxiproxy');
        const res = await fetch(`${stack().toxiproxy!.api}/proxies/restart-probe`);
        expect(res.status).toBe(200);
        const p = (await res.json()) as { listen: string; upstream: string; enabled: boolean };
        expect(p).toMatchObject({ listen, upstream, enabled: false });
        await tox.setEnabled('restart-probe', true);
        const health = await fetch(`http://${listen}/minio/health/live`);
        expect(health.status).toBe(200);
      } finally {
        await tox.remove('restart-probe');
      }
    });
  });

  /**
   * A stack of its own (its `down` must not take the shared one along): S3 and Temporal routed through
   * toxiproxy, a control worker and an agent started by the supervisor, more started "by hand".
   */
  describe('a stack of its own: faults through named proxies, hand-started workers, down', () => {
    let home: string;
    let own: StackState;
    let k: KybernateClient;
    /** A data directory outside the stack's home, for the agent started by hand. */
    let outside: string;
    const byHand: ChildProcess[] = [];
    // stderr piped, not inherited: the commands this suite makes fail on purpose stay off the console, and a
    // command that fails unexpectedly still shows its stderr in the error jest prints.
    const cli = (...args: string[]): string =>
      execFileSync(process.execPath, [CLI, ...args], {
        env: { ...process.env, KYBERNATE_HOME: home },
        encoding: 'utf8',
        stdio: 'pipe',
      });
    /** `status` exits 1 when anything is unhealthy; its report is what counts here. */
    const statusOut = (): string =>
      spawnSync(process.execPath, [CLI, 'status'], { env: { ...process.env, KYBERNATE_HOME: home }, encoding: 'utf8' })
        .stdout;
    const rec = (component: string) => readStackState(home)?.processes.find((p) => p.component === component);
    /** As if typed in another terminal: its own process group, the stack found through KYBERNATE_HOME. */
    const handStart = (...args: string[]): ChildProcess => {
      const fd = fs.openSync(path.join(outside, `${args[0]}-${byHand.length}.log`), 'a');
      const c = spawn(process.execPath, [CLI, ...args], {
        env: { ...process.env, KYBERNATE_HOME: home },
        stdio: ['ignore', fd, fd],
        detached: true,
      });
      fs.closeSync(fd);
      byHand.push(c);
      return c;
    };
    const nsOf = (pid: number): string | null => {
      try {
        return fs.readlinkSync(`/proc/${pid}/ns/pid`);
      } catch {
        return null;
      }
    };
    const inNamespace = (ns: string): number[] =>
      fs
        .readdirSync('/proc')
        .filter((n) => /^\d+$/.test(n) && nsOf(Number(n)) === ns)
        .map(Number)
        .filter(alive);

    beforeAll(async () => {
      home = fs.mkdtempSync(path.join(os.tmpdir(), 'kybernate-own-'));
      outside = fs.mkdtempSync(path.join(os.tmpdir(), 'kybernate-hand-data-'));
      own = await up({ home, proxies: ['s3', 'temporal'], log: () => undefined });
      await startControlWorker(own);
      await startAgent(own, { node: 'own-a', declaredVramBytes: 8 * 2 ** 30 });
      k = await KybernateClient.connect(configFromStack(own));
    }, 240000);
    afterAll(async () => {
      await k?.close();
      if (home) await down({ home, log: () => undefined });
      for (const c of byHand) if (c.pid && alive(c.pid)) process.kill(c.pid, 'SIGKILL');
      if (home) fs.rmSync(home, { recursive: true, force: true });
      if (outside) fs.rmSync(outside, { recursive: true, force: true });
    });

    test('up with proxies: workers reach S3 and Temporal through proxies named s3 and temporal; `kybernate fault s3 down|up` cuts the agent off S3 and back', async () => {
      const proxies = (await (await fetch(`${own.toxiproxy!.api}/proxies`)).json()) as Record<
        string,
        { listen: string; upstream: string }
      >;
      expect(proxies.s3.upstream).toBe(new URL(own.s3.endpoint).host);
      expect(proxies.temporal.upstream).toBe(own.temporal.address);
      expect(own.toxiproxy!.routes).toEqual({ s3: `http://${proxies.s3.listen}`, temporal: proxies.temporal.listen });
      // What a worker started from this checkout sees: the local stack's settings as the defaults under the environment.
      const cfg = loadConfig({ KYBERNATE_HOME: home }, localDefaults({ KYBERNATE_HOME: home }).config);
      expect(cfg.s3.endpoint).toBe(own.toxiproxy!.routes!.s3);
      expect(cfg.temporalAddress).toBe(own.toxiproxy!.routes!.temporal);
      expect(cli('status')).toMatch(/healthy +toxiproxy .*proxy s3: workers reach s3 via/);

      const info = await k.runWorkload({ node: 'own-a', jobId: 'cut', command: [PYTHON, PATTERN, '16', 'cut'] });
      await until('cut ticking', () => lastTick(info.logFile) >= 2, 30000);
      expect(cli('fault', 's3', 'down')).toContain('s3 cut');
      expect(statusOut()).toMatch(/UNHEALTHY toxiproxy .*proxy 's3' is cut/);
      // The direct endpoint still answers: only the proxied link, the one the agent uses, is cut.
      expect((await fetch(`${own.s3.endpoint}/minio/health/live`)).status).toBe(200);
      await expect(
        fetch(`${own.toxiproxy!.routes!.s3}/minio/health/live`, { signal: AbortSignal.timeout(3000) }),
      ).rejects.toThrow();
      await k.startCheckpoint({ target: 'cut', node: 'own-a', checkpointId: 'own-cut-1', uploadMaxAttempts: 2 });
      await until(
        'PendingUpload on nvme',
        async () => (await k.describeCheckpoint('own-cut-1')).phase === 'PendingUpload',
        90000,
        500,
      );
      expect((await k.describeCheckpoint('own-cut-1')).tier).toBe('nvme');
      expect(cli('fault', 's3', 'up')).toContain('s3 restored');
      const done = await k.checkpointResult('own-cut-1');
      expect(done).toMatchObject({ phase: 'Durable', tier: 's3' });

      cli('fault', 's3', 'latency', '400');
      const t0 = Date.now();
      expect((await fetch(`${own.toxiproxy!.routes!.s3}/minio/health/live`)).status).toBe(200);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(400);
      cli('fault', 's3', 'reset');
      const p = (await (await fetch(`${own.toxiproxy!.api}/proxies/s3`)).json()) as {
        enabled: boolean;
        toxics: unknown[];
      };
      expect(p).toMatchObject({ enabled: true, toxics: [] });
      expect(() => cli('fault', 'minio', 'down')).toThrow(/link: 'minio' is not routed/);

      // The Temporal link: cut for whoever goes through the proxy, the server itself answers on.
      const reach = async (address: string): Promise<boolean> => {
        try {
          await (await Connection.connect({ address, connectTimeout: 2000 })).close();
          return true;
        } catch {
          return false;
        }
      };
      expect(cli('fault', 'temporal', 'down')).toContain('temporal cut');
      expect(await reach(own.toxiproxy!.routes!.temporal!)).toBe(false);
      expect(await reach(own.temporal.address)).toBe(true);
      cli('fault', 'temporal', 'up');
      expect(await reach(own.toxiproxy!.routes!.temporal!)).toBe(true);
    }, 240000);

    test('an agent and a worker started by hand join the stack (status, restart), and a clean exit leaves it', async () => {
      handStart('agent', '--node', 'hand', '--data-dir', path.join(outside, 'hand'), '--declared-vram', '8GiB');
      const agent = await until('hand agent registered', () => rec('agent:hand'), 60000);
      expect(agent.handStarted).toBe(true);
      await until(
        'hand agent polls',
        () => hasPoller(own.temporal.address, own.temporal.namespace, nodeQueue('hand'), 'activity', agent.pid),
        60000,
      );
      expect(cli('status')).toMatch(new RegExp(`healthy +agent:hand +pid ${agent.pid} +started by hand`));

      const worker = handStart('worker');
      await until(
        'hand worker registered',
        () => readStackState(home)?.processes.some((p) => p.pid === worker.pid),
        60000,
      );
      process.kill(worker.pid!, 'SIGTERM');
      await until('hand worker exits', () => !alive(worker.pid!), 30000);
      expect(readStackState(home)!.processes.some((p) => p.pid === worker.pid)).toBe(false);

      // restart: the supervised control worker, then the hand-started agent (now detached, logging under home).
      const oldWorker = rec('control-worker')!.pid;
      expect(cli('restart', 'worker')).toMatch(/control-worker running as pid \d+/);
      const newWorker = rec('control-worker')!.pid;
      expect(newWorker).not.toBe(oldWorker);
      expect(alive(oldWorker)).toBe(false);
      expect(await hasPoller(own.temporal.address, own.temporal.namespace, CONTROL_QUEUE, 'workflow', newWorker)).toBe(
        true,
      );
      cli('restart', 'agent:hand', '--signal', 'SIGKILL');
      const again = rec('agent:hand')!;
      expect(again.pid).not.toBe(agent.pid);
      expect(alive(agent.pid)).toBe(false);
      expect(
        await hasPoller(own.temporal.address, own.temporal.namespace, nodeQueue('hand'), 'activity', again.pid),
      ).toBe(true);
      expect(() => cli('restart', 'postgres')).toThrow(/component: 'postgres' is none of/);
    }, 240000);

    test('kybernate up on the running stack leaves what runs alone and starts a crashed agent again as it was', async () => {
      const before = readStackState(home)!;
      const worker = rec('control-worker')!.pid;
      const agentA = rec('agent:own-a')!;
      process.kill(agentA.pid, 'SIGKILL');
      await until('agent gone', () => !alive(agentA.pid), 10000);
      cli('up', '--nodes', 'own-a');
      const after = readStackState(home)!;
      expect(after.temporal).toEqual(before.temporal);
      expect(rec('control-worker')!.pid).toBe(worker);
      const again = rec('agent:own-a')!;
      expect(again.pid).not.toBe(agentA.pid);
      expect(again.command).toEqual(agentA.command);
      expect(after.processes.filter((p) => p.component === 'agent:own-a')).toHaveLength(1);
      expect(
        await hasPoller(own.temporal.address, own.temporal.namespace, nodeQueue('own-a'), 'activity', again.pid),
      ).toBe(true);
    }, 120000);

    test("down stops every workload: one that exec'd another program with another environment, its child, and a restored one; /proc keeps none", async () => {
      // On the hand-started agent, whose data directory is outside the stack's home.
      const chameleon = await k.runWorkload({
        node: 'hand',
        jobId: 'chameleon',
        command: [
          '/bin/sh',
          '-c',
          "sleep 1001 & exec env -i PATH=/bin:/usr/bin python3 -c \"import os; os.execv('/bin/sleep', ['renamed', '1002'])\"",
        ],
      });
      // chameleon.pid is the namespace's pid 1 (an init such as tini, or the workload itself without one).
      const chameleonNs = nsOf(chameleon.pid)!;
      const renamed = await until(
        "exec'd",
        () => inNamespace(chameleonNs).find((p) => cmdline(p).startsWith('renamed\x001002')),
        10000,
      );
      expect(fs.readFileSync(`/proc/${renamed}/environ`, 'utf8')).not.toContain('KYBERNATE_JOB_ID');
      expect(inNamespace(chameleonNs).some((p) => cmdline(p).startsWith('sleep\x001001'))).toBe(true);

      // The checkpoint of the first test (its process was dumped and is gone), restored: a new pid in a new namespace.
      const { workflowId } = await k.startRestore({ checkpointId: 'own-cut-1', node: 'own-a' });
      const restored = await k.restoreResult(workflowId);
      expect(restored.phase).toBe('Running');
      expect(alive(restored.pid!)).toBe(true);
      const restoredNs = nsOf(restored.pid!)!;
      const found = findWorkloadProcesses(home).map((p) => p.pid);
      expect(found).toEqual(expect.arrayContaining([...inNamespace(chameleonNs), restored.pid!]));

      const agents = readStackState(home)!.processes.map((p) => p.pid);
      await down({ home, log: () => undefined });
      expect(alive(chameleon.pid)).toBe(false);
      expect(alive(renamed)).toBe(false);
      expect(alive(restored.pid!)).toBe(false);
      expect(inNamespace(chameleonNs)).toEqual([]);
      expect(inNamespace(restoredNs)).toEqual([]);
      expect(agents.filter(alive)).toEqual([]);
      expect(readStackState(home)).toBeNull();
    }, 240000);
  });
});
