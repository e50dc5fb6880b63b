import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { ApplicationFailure } from '@temporalio/common';
import { criuDump, criuRestore, workloadFileIndex } from '../../activities/node/criu';
import {
  attachToJobCgroup,
  cgroupVersion,
  createJobCgroup,
  jobCgroupDirs,
  removeJobCgroup,
} from '../../activities/node/cgroups';
import type { NodeContext } from '../../activities/node/context';
import {
  archiveRunLog,
  attachRunLimits,
  awaitRunExit,
  collectDiagnostics,
  inspectRun,
  readRunLog,
  startRun,
  stopRun,
} from '../../activities/node/job-run';
import { type OwnerState, sweepOrphans, temporalOwnerLookup } from '../../activities/node/orphans';
import { Client, Connection } from '@temporalio/client';
import { configFromStack } from '../../deploy/local/stack';
import { isSameProcess, processAlive, processIdentity, processTree } from '../../activities/node/process';
import { makeS3Client } from '../../activities/s3-client';
import type { StartRunInput } from '../../common/job';
import { BIN, REPO_ROOT } from '../../deploy/local/paths';
import { localNodeContext, PYTHON, stack, until } from '../support/stack';

/**
 * The node side of a job's runs against the real shim, the real tini and this host's real cgroups. Each test has
 * its own job id (a cgroup path is kybernate/<node>/<job>) and checks that nothing of it is left afterwards.
 */
const NODE = `unit-jobrun-${process.pid}`;
let tmp: string;
let ctx: NodeContext;
const jobs: string[] = [];

beforeEach(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kyb-jobrun-'));
  ctx = { ...localNodeContext(NODE, path.join(tmp, 'data')), stagingDir: path.join(tmp, 'staging') };
});
afterEach(async () => {
  // Whatever a failed test left behind goes; the tests themselves check it is already gone.
  for (const j of jobs.splice(0)) {
    for (const pid of jobProcesses(j)) process.kill(pid, 'SIGKILL');
    await removeJobCgroup(ctx, j).catch(() => undefined);
  }
  fs.rmSync(tmp, { recursive: true, force: true });
});

// The node's own cgroup parents (kybernate/<node>) go too, once the jobs' are gone.
afterAll(() => {
  for (const d of jobCgroupDirs(ctx, 'x').values()) {
    try {
      fs.rmdirSync(path.dirname(d));
    } catch {
      /* not there, or a job's cgroup is left (a failed test; the tests check for that) */
    }
  }
});

function newJob(name: string): string {
  const id = `${name}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  jobs.push(id);
  return id;
}

/** Processes whose environment names the job (every process of a run has KYBERNATE_JOB_ID). */
function jobProcesses(jobId: string): number[] {
  const out: number[] = [];
  for (const p of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      if (
        fs.readFileSync(`/proc/${p}/environ`, 'utf8').split('\0').includes(`KYBERNATE_JOB_ID=${jobId}`) &&
        processAlive(Number(p))
      )
        out.push(Number(p));
    } catch {
      /* gone, or not ours to read */
    }
  }
  return out;
}

const existingCgroups = (jobId: string): string[] =>
  [...jobCgroupDirs(ctx, jobId).values()].filter((d) => fs.existsSync(d));

function run(
  jobId: string,
  command: string[],
  extra: Partial<StartRunInput> = {},
): Promise<import('../../common/job').StartRunResult> {
  return startRun(ctx, { jobId, run: 1, command, limits: {}, ...extra });
}

async function expectFailure(p: Promise<unknown>, type: string): Promise<ApplicationFailure> {
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ApplicationFailure);
  expect((err as ApplicationFailure).type).toBe(type);
  return err as ApplicationFailure;
}

const RFC3339_NANO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$/;

describe('the run shim (C)', () => {
  test('compiles clean with -Wall -Wextra -Werror and stays under 300 lines', () => {
    const src = path.join(REPO_ROOT, 'deploy', 'native', 'kybernate-shim.c');
    execFileSync('cc', ['-O2', '-Wall', '-Wextra', '-Werror', '-o', path.join(tmp, 'shim'), src], { stdio: 'pipe' });
    expect(fs.readFileSync(src, 'utf8').split('\n').length).toBeLessThan(300);
  });

  test('splits a line longer than 16 KiB into P parts and records a signal', () => {
    const log = path.join(tmp, 'log');
    const exit = path.join(tmp, 'exit.json');
    let code = 0;
    try {
      execFileSync(BIN.shim, [
        '--log',
        log,
        '--exit',
        exit,
        '--',
        PYTHON,
        '-c',
        "import os,sys; sys.stdout.write('a'*40000+'\\nb'); sys.stdout.flush(); os.kill(os.getpid(), 15)",
      ]);
    } catch (e) {
      code = (e as { status: number }).status;
    }
    expect(code).toBe(128 + 15);
    const lines = fs
      .readFileSync(log, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => l.split(' '));
    expect(lines.map((l) => [l[1], l[2], l[3].length])).toEqual([
      ['stdout', 'P', 16384],
      ['stdout', 'P', 16384],
      ['stdout', 'F', 40000 - 2 * 16384],
      ['stdout', 'P', 1],
    ]);
    expect(JSON.parse(fs.readFileSync(exit, 'utf8'))).toMatchObject({ signal: 'SIGTERM', signo: 15 });
  });

  test('refuses to run the workload when it cannot join a cgroup (exit 125, nothing run)', () => {
    const marker = path.join(tmp, 'ran');
    let err: { status: number; stderr: Buffer } | null = null;
    try {
      execFileSync(
        BIN.shim,
        [
          '--log',
          path.join(tmp, 'log'),
          '--exit',
          path.join(tmp, 'exit.json'),
          '--cgroup',
          path.join(tmp, 'nope'),
          '--',
          'touch',
          marker,
        ],
        { stdio: 'pipe' },
      );
    } catch (e) {
      err = e as { status: number; stderr: Buffer };
    }
    expect(err?.status).toBe(125);
    expect(err?.stderr.toString()).toMatch(/cannot join cgroup/);
    expect(fs.existsSync(marker)).toBe(false);
    expect(fs.existsSync(path.join(tmp, 'exit.json'))).toBe(false);
  });
});

describe('job runs on a node', () => {
  beforeAll(() => expect(cgroupVersion()).not.toBe('none'));

  test('stdout and stderr lines in order with their stream, a partial last line, exit 0 => Completed', async () => {
    const jobId = newJob('lines');
    const r = await run(jobId, [
      'sh',
      '-c',
      'echo out1; sleep 0.1; echo err1 >&2; sleep 0.1; echo out2; sleep 0.1; printf tail',
    ]);
    expect(r.logFile).toBe(path.join(ctx.dataDir, 'workloads', jobId, 'runs', '1', 'log'));
    const exit = await awaitRunExit(ctx, { jobId, run: 1, process: r.process, exitFile: r.exitFile });
    expect(exit).toMatchObject({ reason: 'Completed', exitCode: 0, signal: null });
    const log = readRunLog({ jobId, logFile: r.logFile, offset: 0 });
    expect(log.lines.map((l) => [l.stream, l.partial, l.text])).toEqual([
      ['stdout', false, 'out1'],
      ['stderr', false, 'err1'],
      ['stdout', false, 'out2'],
      ['stdout', true, 'tail'],
    ]);
    for (const l of log.lines) expect(l.time).toMatch(RFC3339_NANO);
    expect(log.nextOffset).toBe(log.size);
    expect(inspectRun({ process: r.process })).toEqual({ running: false });
    await stopRun(ctx, { jobId, run: 1, process: r.process, graceMs: 1000, reason: 'test' });
    expect(existingCgroups(jobId)).toEqual([]);
  });

  test('a run as another user: the command drops to that user, the shim stays root to write the log', async () => {
    const jobId = newJob('user');
    const r = await run(jobId, ['sh', '-c', 'id -u; id -g'], { user: { uid: 65534, gid: 65534 }, cwd: '/' });
    expect(await awaitRunExit(ctx, { jobId, run: 1, process: r.process, exitFile: r.exitFile })).toMatchObject({
      reason: 'Completed',
    });
    expect(readRunLog({ jobId, logFile: r.logFile, offset: 0 }).lines.map((l) => l.text)).toEqual(['65534', '65534']);
    await stopRun(ctx, { jobId, run: 1, process: r.process, graceMs: 0, reason: 'test' });
  });

  test('exit code 3 => Error with code 3, even when the run ends within the settle window', async () => {
    const jobId = newJob('exit3');
    const r = await run(jobId, ['sh', '-c', 'exit 3']);
    const exit = await awaitRunExit(ctx, { jobId, run: 1, process: r.process, exitFile: r.exitFile });
    expect(exit).toMatchObject({ reason: 'Error', exitCode: 3, signal: null, message: 'exited with code 3' });
    // Its start, by the node's clock like its end: never after the end, though startRun answered after it.
    expect(Date.parse(r.startedAt!)).toBeLessThanOrEqual(Date.parse(exit.endedAt));
    await stopRun(ctx, { jobId, run: 1, process: r.process, graceMs: 0, reason: 'test' });
  });

  test('SIGTERM stop: the run is Signaled and recorded, nothing of the job is left (processes, cgroups)', async () => {
    const jobId = newJob('term');
    const r = await run(jobId, ['sleep', '300'], { limits: { memoryBytes: 256 << 20, pids: 64, cpu: 0.5 } });
    expect(inspectRun({ process: r.process })).toEqual({ running: true });
    const dirs = existingCgroups(jobId);
    expect(dirs.length).toBeGreaterThan(0);
    const inCgroup = dirs
      .flatMap((d) => fs.readFileSync(path.join(d, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean))
      .map(Number);
    expect(inCgroup.length).toBeGreaterThan(0); // the shim and sleep joined before the fork
    const waiting = awaitRunExit(ctx, { jobId, run: 1, process: r.process, exitFile: r.exitFile });
    const stop = await stopRun(ctx, { jobId, run: 1, process: r.process, graceMs: 10000, reason: 'test stop' });
    expect(stop.signal).toBe('SIGTERM');
    await expect(waiting).resolves.toMatchObject({ reason: 'Signaled', signal: 'SIGTERM', exitCode: null });
    expect(jobProcesses(jobId)).toEqual([]);
    expect(existingCgroups(jobId)).toEqual([]);
    expect(fs.existsSync(path.join(ctx.dataDir, 'workloads', jobId, 'pid'))).toBe(false);
    // Idempotent: a second stop finds nothing.
    expect(await stopRun(ctx, { jobId, run: 1, process: r.process, graceMs: 1000, reason: 'again' })).toEqual({
      signal: null,
      killedStragglers: 0,
    });
  });

  test('a descendant that left the session is killed by stopRun too', async () => {
    const jobId = newJob('escape');
    const r = await run(jobId, ['sh', '-c', 'setsid sleep 301 >/dev/null 2>&1 </dev/null & exec sleep 300']);
    await until('the escaped descendant', () => jobProcesses(jobId).length >= 3, 10000);
    await stopRun(ctx, { jobId, run: 1, process: r.process, graceMs: 5000, reason: 'test' });
    expect(jobProcesses(jobId)).toEqual([]);
    expect(existingCgroups(jobId)).toEqual([]);
  });

  test('removeJobCgroup kills what is in the cgroup however it got there', async () => {
    const jobId = newJob('stragglers');
    createJobCgroup(ctx, jobId, {});
    const loose = spawn('sleep', ['300'], { detached: true, stdio: 'ignore' });
    loose.unref();
    attachToJobCgroup(ctx, jobId, [loose.pid!]);
    const r = await removeJobCgroup(ctx, jobId);
    expect(r.killed).toBe(1);
    await until('the straggler to be gone', () => !processAlive(loose.pid!), 5000);
    expect(existingCgroups(jobId)).toEqual([]);
  });

  test('a run over its 64 MiB memory limit is OOMKilled', async () => {
    const jobId = newJob('oom');
    const r = await run(jobId, [PYTHON, '-c', "x = b'a' * (256 << 20)\nprint('survived')"], {
      limits: { memoryBytes: 64 << 20 },
    });
    const exit = await awaitRunExit(ctx, { jobId, run: 1, process: r.process, exitFile: r.exitFile });
    expect(exit).toMatchObject({ reason: 'OOMKilled', signal: 'SIGKILL' });
    expect(exit.message).toMatch(/memory limit \(67108864 bytes\)/);
    expect(readRunLog({ jobId, logFile: r.logFile, offset: 0 }).lines.map((l) => l.text)).not.toContain('survived');
    await stopRun(ctx, { jobId, run: 1, process: r.process, graceMs: 0, reason: 'test' });
    expect(existingCgroups(jobId)).toEqual([]);
  });

  test('a fork bomb under a pids limit of 32 cannot fork past it; the run ends and stopRun cleans all', async () => {
    const jobId = newJob('forks');
    const r = await run(
      jobId,
      ['sh', '-c', 'i=0; while [ $i -lt 200 ]; do sleep 60 & i=$((i+1)); done; echo all forked; wait'],
      { limits: { pids: 32 } },
    );
    const pidsDir = jobCgroupDirs(ctx, jobId).get('pids') ?? jobCgroupDirs(ctx, jobId).get('unified')!;
    const waiting = awaitRunExit(ctx, { jobId, run: 1, process: r.process, exitFile: r.exitFile });
    let seen = 0;
    let failedForks = 0;
    for (let i = 0; i < 10; i++) {
      try {
        seen = Math.max(
          seen,
          fs.readFileSync(path.join(pidsDir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).length,
        );
        failedForks = Number(
          /^max (\d+)$/m.exec(fs.readFileSync(path.join(pidsDir, 'pids.events'), 'utf8'))?.[1] ?? failedForks,
        );
      } catch {
        break; // the cgroup is gone: the run ended
      }
      await new Promise((res) => setTimeout(res, 100));
    }
    const exit = await waiting;
    expect(seen).toBeGreaterThan(20);
    expect(seen).toBeLessThanOrEqual(32);
    expect(failedForks).toBeGreaterThan(0);
    expect(exit.reason).toBe('Error');
    const text = readRunLog({ jobId, logFile: r.logFile, offset: 0 }).lines.map((l) => `${l.stream}: ${l.text}`);
    expect(text.join('\n')).toMatch(/stderr: .*fork/i);
    expect(text).not.toContain('stdout: all forked');
    await stopRun(ctx, { jobId, run: 1, process: r.process, graceMs: 1000, reason: 'test' });
    expect(jobProcesses(jobId)).toEqual([]);
    expect(existingCgroups(jobId)).toEqual([]);
  });

  test('command not found => StartFailure with nothing spawned', async () => {
    const jobId = newJob('notfound');
    const err = await expectFailure(run(jobId, ['no-such-command-kyb']), 'StartFailure');
    expect(err.nonRetryable).toBe(true);
    expect(err.message).toMatch(/no-such-command-kyb/);
    expect(jobProcesses(jobId)).toEqual([]);
    expect(existingCgroups(jobId)).toEqual([]);
    expect(fs.existsSync(path.join(ctx.dataDir, 'workloads', jobId, 'pid'))).toBe(false);
    const notExec = path.join(tmp, 'script');
    fs.writeFileSync(notExec, '#!/bin/sh\n', { mode: 0o644 });
    await expectFailure(run(jobId, [notExec]), 'StartFailure');
  });

  test('bad limits are refused naming the field, before anything is touched', async () => {
    const jobId = newJob('badlimits');
    const err = await expectFailure(run(jobId, ['true'], { limits: { memoryBytes: -1 } }), 'InvalidInput');
    expect(err.message).toMatch(/^limits\.memoryBytes: /);
    expect(fs.existsSync(path.join(ctx.dataDir, 'workloads', jobId))).toBe(false);
  });

  test('a run killed with SIGKILL together with its shim and init => LostWhileAgentDown', async () => {
    const jobId = newJob('lost');
    const r = await run(jobId, ['sleep', '300']);
    const tree = processTree(r.process.pid);
    expect(tree.length).toBeGreaterThanOrEqual(3); // tini, shim, sleep
    // The init first: its death takes the namespace (shim and all) with it, so the others may be gone already.
    for (const p of tree) {
      try {
        process.kill(p, 'SIGKILL');
      } catch (e) {
        expect((e as NodeJS.ErrnoException).code).toBe('ESRCH');
      }
    }
    const exit = await awaitRunExit(ctx, { jobId, run: 1, process: r.process, exitFile: r.exitFile });
    expect(exit.reason).toBe('LostWhileAgentDown');
    expect(exit.exitCode).toBeNull();
    await stopRun(ctx, { jobId, run: 1, process: r.process, graceMs: 0, reason: 'test' });
    expect(existingCgroups(jobId)).toEqual([]);
  });

  test('a retried start of the same run answers the same; another run of a running job is refused', async () => {
    const jobId = newJob('retry');
    const a = await run(jobId, ['sleep', '300']);
    expect(await run(jobId, ['sleep', '300'])).toEqual(a);
    await expectFailure(startRun(ctx, { jobId, run: 2, command: ['sleep', '300'], limits: {} }), 'JobAlreadyRunning');
    // The start's answer lost and the pid file with it (the agent died right after the spawn): the run's tasks in
    // the cgroup still refuse a second copy, and a stop naming no process clears them.
    fs.rmSync(path.join(ctx.dataDir, 'workloads', jobId, 'pid'));
    await expectFailure(startRun(ctx, { jobId, run: 2, command: ['sleep', '300'], limits: {} }), 'JobAlreadyRunning');
    const stopped = await stopRun(ctx, { jobId, run: 2, process: null, graceMs: 5000, reason: 'test' });
    expect(stopped.killedStragglers).toBeGreaterThan(0);
    // The init is outside the cgroup (the shim joins it); it exits on its own once its child is gone.
    await until("the run's init gone", () => jobProcesses(jobId).length === 0, 5000);
    const b = await startRun(ctx, { jobId, run: 2, command: ['sleep', '300'], limits: {} });
    // A late stop of the gone run 1 leaves run 2 alone.
    expect(await stopRun(ctx, { jobId, run: 1, process: a.process, graceMs: 0, reason: 'late' })).toEqual({
      signal: null,
      killedStragglers: 0,
    });
    expect(inspectRun({ process: b.process })).toEqual({ running: true });
    expect((await stopRun(ctx, { jobId, run: 2, process: b.process, graceMs: 5000, reason: 'test' })).signal).toBe(
      'SIGTERM',
    );
    expect(jobProcesses(jobId)).toEqual([]);
  });

  test('a resumed run is moved into its cgroup (attachRunLimits): everything under its init', async () => {
    const jobId = newJob('attach');
    const loose = spawn('sh', ['-c', 'sh -c "sleep 300 & wait" & wait'], { detached: true, stdio: 'ignore' });
    loose.unref();
    await until('its descendants', () => processTree(loose.pid!).length >= 3, 5000);
    const proc = processIdentity(loose.pid!)!;
    const { cgroup } = await attachRunLimits(ctx, { jobId, limits: { pids: 16 }, process: proc });
    const pidsDir = cgroup.find((d) => d.includes('/pids/'))!;
    const members = fs
      .readFileSync(path.join(pidsDir, 'cgroup.procs'), 'utf8')
      .split('\n')
      .filter(Boolean)
      .map(Number)
      .sort();
    expect(members).toEqual(
      processTree(loose.pid!)
        .filter((p) => p !== loose.pid)
        .sort(),
    );
    const r = await removeJobCgroup(ctx, jobId);
    expect(r.killed).toBe(2);
    // The init, left out, ends on its own once its children are gone.
    await until('the init gone', () => !processAlive(loose.pid!), 5000);
  });

  test('readRunLog in small chunks concatenates to exactly the file; paths are checked by shape', async () => {
    const jobId = newJob('chunks');
    const script =
      "import sys\nfor i in range(300):\n  (sys.stdout if i % 3 else sys.stderr).write('line %d %s\\n' % (i, 'x' * (i * 7 % 90)))\nsys.stdout.write('y' * 20000 + '\\n')\nsys.stdout.flush()";
    const r = await run(jobId, [PYTHON, '-c', script]);
    await awaitRunExit(ctx, { jobId, run: 1, process: r.process, exitFile: r.exitFile });
    const file = fs.readFileSync(r.logFile, 'utf8');
    let offset = 0;
    let rebuilt = '';
    let reads = 0;
    for (;;) {
      const part = readRunLog({ jobId, logFile: r.logFile, offset, maxBytes: 100 });
      if (part.lines.length === 0) break;
      // At most maxBytes, unless one line is longer (then that line alone, so the reader gets past it).
      expect(part.nextOffset - offset <= 100 || part.lines.length === 1).toBe(true);
      rebuilt += part.lines.map((l) => `${l.time} ${l.stream} ${l.partial ? 'P' : 'F'} ${l.text}\n`).join('');
      offset = part.nextOffset;
      reads++;
    }
    expect(reads).toBeGreaterThan(200);
    expect(rebuilt).toBe(file);
    expect(offset).toBe(Buffer.byteLength(file));
    await expectFailure(
      Promise.resolve().then(() => readRunLog({ jobId, logFile: '/etc/passwd', offset: 0 })),
      'InvalidInput',
    );
    await expectFailure(
      Promise.resolve().then(() =>
        readRunLog({ jobId, logFile: `${ctx.dataDir}/workloads/${jobId}/runs/1/../../../x/runs/1/log`, offset: 0 }),
      ),
      'InvalidInput',
    );
    await expectFailure(
      Promise.resolve().then(() => readRunLog({ jobId: 'other', logFile: r.logFile, offset: 0 })),
      'InvalidInput',
    );
    // Another node's data dir is fine (a resumed run keeps its paths); a missing file is empty.
    expect(readRunLog({ jobId, logFile: `/elsewhere/workloads/${jobId}/runs/7/log`, offset: 0 })).toEqual({
      lines: [],
      nextOffset: 0,
      size: 0,
    });
    await stopRun(ctx, { jobId, run: 1, process: r.process, graceMs: 0, reason: 'test' });
  });

  test('archiveRunLog and collectDiagnostics store to S3', async () => {
    const jobId = newJob('archive');
    const r = await run(jobId, ['sh', '-c', 'for i in 1 2 3; do echo hello $i; done; exit 1']);
    await awaitRunExit(ctx, { jobId, run: 1, process: r.process, exitFile: r.exitFile });
    const a = await archiveRunLog(ctx, { jobId, run: 1, logFile: r.logFile });
    expect(a).toEqual({ key: `logs/${jobId}/run-1.log`, bytes: fs.statSync(r.logFile).size });
    const s3 = makeS3Client(ctx.s3);
    const get = async (key: string): Promise<string> =>
      (await s3.send(new GetObjectCommand({ Bucket: ctx.s3.bucket, Key: key }))).Body!.transformToString();
    try {
      expect(await get(a.key)).toBe(fs.readFileSync(r.logFile, 'utf8'));
      const at = '2026-11-27T15:00:00.000Z';
      const d = await collectDiagnostics(ctx, { jobId, at, error: 'past max restarts', runs: [], logFile: r.logFile });
      expect(d.prefix).toBe(`diagnostics/${jobId}/2026-11-27T15-00-00.000Z/`);
      expect(
        (await get(`${d.prefix}log-tail.txt`))
          .trim()
          .split('\n')
          .map((l) => l.split(' ').slice(3).join(' ')),
      ).toEqual(['hello 1', 'hello 2', 'hello 3']);
      expect(JSON.parse(await get(`${d.prefix}summary.json`))).toMatchObject({ error: 'past max restarts' });
      expect(JSON.parse(await get(`${d.prefix}node.json`))).toMatchObject({ node: NODE });
    } finally {
      s3.destroy();
    }
    await stopRun(ctx, { jobId, run: 1, process: r.process, graceMs: 0, reason: 'test' });
  });
});

describe('the orphan sweep at agent start', () => {
  const checkpointDirs = (): { partial: string; complete: string; staged: string } => {
    const partial = path.join(ctx.dataDir, 'checkpoints', 'ck-partial');
    const complete = path.join(ctx.dataDir, 'checkpoints', 'ck-complete');
    const staged = path.join(ctx.stagingDir!, 'ck-staged');
    for (const d of [partial, complete, staged]) fs.mkdirSync(d, { recursive: true });
    fs.writeFileSync(path.join(partial, 'pages-1.img'), 'x');
    fs.writeFileSync(path.join(complete, 'metadata.json'), '{}');
    return { partial, complete, staged };
  };

  test('owners closed: removes the job cgroup with its processes and partial checkpoint dirs, never a complete one', async () => {
    const jobId = newJob('orphan');
    const r = await run(jobId, ['sleep', '300']);
    const d = checkpointDirs();
    const asked: string[] = [];
    const report = await sweepOrphans(ctx, async (id): Promise<OwnerState> => {
      asked.push(id);
      return id === 'checkpoint/ck-staged' ? 'not-found' : 'closed';
    });
    expect(asked.sort()).toEqual([`job/${jobId}`, 'checkpoint/ck-partial', 'checkpoint/ck-staged'].sort());
    expect(report.skipped).toBeNull();
    expect(report.removed.map((x) => x.kind).sort()).toEqual(['checkpoint', 'job', 'staging']);
    expect(fs.existsSync(d.partial)).toBe(false);
    expect(fs.existsSync(d.staged)).toBe(false);
    expect(fs.existsSync(path.join(d.complete, 'metadata.json'))).toBe(true);
    expect(existingCgroups(jobId)).toEqual([]);
    expect(inspectRun({ process: r.process })).toEqual({ running: false });
    expect(jobProcesses(jobId)).toEqual([]);
  });

  test('owners open, or Temporal cannot answer: nothing is removed', async () => {
    const jobId = newJob('owned');
    const r = await run(jobId, ['sleep', '300']);
    const d = checkpointDirs();
    expect((await sweepOrphans(ctx, async () => 'open')).removed).toEqual([]);
    const unknown = await sweepOrphans(ctx, async (id) => {
      if (id.startsWith('checkpoint/')) throw new Error('deadline exceeded');
      return 'closed';
    });
    expect(unknown.skipped).toMatch(/deadline exceeded/);
    expect(unknown.removed).toEqual([]);
    expect(fs.existsSync(d.partial) && fs.existsSync(d.staged)).toBe(true);
    expect(inspectRun({ process: r.process })).toEqual({ running: true });
    expect(existingCgroups(jobId).length).toBeGreaterThan(0);
    await stopRun(ctx, { jobId, run: 1, process: r.process, graceMs: 5000, reason: 'test' });
  });
});

describe('a run that ignores SIGTERM', () => {
  test('is killed after the grace period, and its shim still records the SIGKILL', async () => {
    const jobId = newJob('stubborn');
    const r = await run(jobId, ['sh', '-c', "trap '' TERM; echo ready; while :; do sleep 0.1; done"]);
    await until(
      'its trap set',
      () => readRunLog({ jobId, logFile: r.logFile, offset: 0 }).lines.some((l) => l.text === 'ready'),
      10000,
    );
    const waiting = awaitRunExit(ctx, { jobId, run: 1, process: r.process, exitFile: r.exitFile });
    const stop = await stopRun(ctx, { jobId, run: 1, process: r.process, graceMs: 1000, reason: 'timeout' });
    expect(stop.signal).toBe('SIGKILL');
    await expect(waiting).resolves.toMatchObject({ reason: 'Signaled', signal: 'SIGKILL' });
    expect(jobProcesses(jobId)).toEqual([]);
    expect(existingCgroups(jobId)).toEqual([]);
  });
});

describe('limits on a host without cgroups', () => {
  test('limits requested => LimitsUnavailable naming the controller; none requested => runs without a cgroup', () => {
    const root = path.join(tmp, 'no-cgroups');
    fs.mkdirSync(root);
    let err: unknown;
    try {
      createJobCgroup(ctx, 'nolimits', { memoryBytes: 1 << 30 }, root);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ApplicationFailure);
    expect((err as ApplicationFailure).type).toBe('LimitsUnavailable');
    expect((err as ApplicationFailure).message).toMatch(/no-cgroups/);
    expect(createJobCgroup(ctx, 'nolimits', {}, root)).toEqual({ dirs: [], version: 'none' });
  });
});

describe('a run under the shim is CRIU-dumpable', () => {
  test('dump, then restore: the run goes on writing its log, and its exit is recorded when stopped', async () => {
    const jobId = newJob('criu');
    const r = await run(jobId, ['sh', '-c', 'i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.1; done']);
    const ticks = (): number[] =>
      readRunLog({ jobId, logFile: r.logFile, offset: 0 }).lines.map((l) => Number(l.text.split(' ')[1]));
    await until('a few ticks', () => ticks().length >= 5, 10000);
    await criuDump(ctx, { checkpointId: 'ck-run', pid: r.process.pid, leaveRunning: false });
    expect(inspectRun({ process: r.process })).toEqual({ running: false });
    const before = ticks();
    const dir = fs.existsSync(path.join(ctx.stagingDir!, 'ck-run'))
      ? path.join(ctx.stagingDir!, 'ck-run')
      : path.join(ctx.dataDir, 'checkpoints', 'ck-run');
    const restored = await criuRestore(ctx, { dir, files: workloadFileIndex(dir) });
    const id = processIdentity(restored.pid)!;
    expect(id).not.toBeNull();
    await until('ticks after the restore', () => ticks().length >= before.length + 5, 10000);
    const after = ticks();
    // Its memory came back: the count carries on from where the dump stopped it, nothing lost or repeated.
    expect(after).toEqual(after.map((_, i) => i));
    // CRIU leaves cgroups alone on restore (--manage-cgroups=ignore): the restored tree is in no job cgroup
    // until it is resumed as node B and moved into B's; A's, emptied by the dump, goes with A's cleanup.
    const inJobCgroup = (): boolean =>
      processTree(id.pid).some((p) => fs.readFileSync(`/proc/${p}/cgroup`, 'utf8').includes(`/kybernate/`));
    expect(inJobCgroup()).toBe(false);
    expect(existingCgroups(jobId).length).toBeGreaterThan(0);
    const ctxB = { ...ctx, node: `${NODE}-b` };
    const { cgroup } = await attachRunLimits(ctxB, { jobId, limits: { pids: 64 }, process: id });
    expect(cgroup.length).toBeGreaterThan(0);
    for (const d of cgroup) expect(d).toContain(`/kybernate/${NODE}-b/${jobId}`);
    expect(inJobCgroup()).toBe(true);
    await stopRun(ctx, {
      jobId,
      run: 1,
      process: r.process,
      graceMs: 1000,
      reason: 'cleanup on A after the preemption',
    });
    expect(existingCgroups(jobId)).toEqual([]);
    expect(isSameProcess(id)).toBe(true);
    const waiting = awaitRunExit(ctxB, { jobId, run: 1, process: id, exitFile: r.exitFile });
    expect((await stopRun(ctxB, { jobId, run: 1, process: id, graceMs: 10000, reason: 'test' })).signal).toBe(
      'SIGTERM',
    );
    await expect(waiting).resolves.toMatchObject({ reason: 'Signaled', signal: 'SIGTERM' });
    expect(jobProcesses(jobId)).toEqual([]);
    expect([...jobCgroupDirs(ctxB, jobId).values()].filter((d) => fs.existsSync(d))).toEqual([]);
    for (const d of jobCgroupDirs(ctxB, jobId).values()) fs.rmdirSync(path.dirname(d)); // node B's parent, made by this test
  }, 120000);
});

describe('the orphan sweep asks the real Temporal', () => {
  test('a workflow never started is not-found; an answer that is not about the workflow stops the sweep', async () => {
    const cfg = configFromStack(stack());
    const conn = await Connection.connect({ address: cfg.temporalAddress });
    try {
      const lookup = temporalOwnerLookup(new Client({ connection: conn, namespace: cfg.namespace }));
      expect(await lookup(`job/never-${process.pid}-${Date.now()}`)).toBe('not-found');
      // A namespace Temporal does not know: an error, not "no such workflow", so nothing may be removed.
      const partial = path.join(ctx.dataDir, 'checkpoints', 'ck-unknown');
      fs.mkdirSync(partial, { recursive: true });
      const report = await sweepOrphans(
        ctx,
        temporalOwnerLookup(new Client({ connection: conn, namespace: `no-such-namespace-${process.pid}` })),
      );
      expect(report.skipped).not.toBeNull();
      expect(fs.existsSync(partial)).toBe(true);
    } finally {
      await conn.close();
    }
  });
});
