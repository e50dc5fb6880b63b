import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ApplicationFailure } from '@temporalio/common';
import pino from 'pino';
import { checkpointDir, type NodeContext, s3Prefix, stagedDir, workloadDir } from '../../activities/node/context';
import { fetchCheckpoint } from '../../activities/node/fetch';
import { journalFile } from '../../activities/node/journal';
import { checkCwd, DEFAULT_PATH, resolveExecutable, resolveRunAs, workloadEnv } from '../../activities/node/launch';
import { readPidFile, writePidFile } from '../../activities/node/pid-file';
import { processTree, treeCpuTicks, writableFiles } from '../../activities/node/process';
import { releaseStaging } from '../../activities/node/staging';
import { deleteCheckpointDir } from '../../activities/node/tier';

let tmp: string;
beforeEach(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kyb-isolation-'));
});
afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

function ctxIn(dir: string): NodeContext {
  return {
    node: 'unit',
    zone: null,
    dataDir: path.join(dir, 'data'),
    criuBin: '/bin/false',
    initBin: null,
    shimBin: '/bin/false',
    criuActionScript: null,
    declaredVramBytes: null,
    stagingDir: path.join(dir, 'staging'),
    s3: { endpoint: 'http://127.0.0.1:1', region: 'us-east-1', accessKeyId: 'x', secretAccessKey: 'y', bucket: 'b' },
    logger: pino({ level: 'silent' }),
  };
}

/** The failure a bad id must raise: InvalidInput, non-retryable, naming the field. */
function expectInvalid(fn: () => unknown, field: string): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(ApplicationFailure);
  const f = err as ApplicationFailure;
  expect(f.type).toBe('InvalidInput');
  expect(f.nonRetryable).toBe(true);
  expect(f.message.startsWith(`${field}: `)).toBe(true);
}

const BAD_IDS = [
  '../victim',
  '../../etc',
  '/etc/passwd',
  '/',
  '..',
  'a/../../b',
  'a\nb',
  'a\0b',
  'tab\there',
  '\x1b[31m',
  '.hidden',
  '',
];

describe('ids are validated where they become paths and S3 keys', () => {
  test.each(BAD_IDS)('%j is refused by every path builder, naming the field', (id) => {
    const ctx = ctxIn(tmp);
    expectInvalid(() => checkpointDir(ctx, id), 'checkpointId');
    expectInvalid(() => stagedDir(ctx, id), 'checkpointId');
    expectInvalid(() => stagedDir({ ...ctx, stagingDir: null }, id), 'checkpointId');
    expectInvalid(() => s3Prefix(id), 'checkpointId');
    expectInvalid(() => workloadDir(ctx, id), 'jobId');
    expectInvalid(() => journalFile(ctx, 'checkpoint', id), 'checkpointId');
  });

  test('good ids still make the paths they always did', () => {
    const ctx = ctxIn(tmp);
    expect(checkpointDir(ctx, 'job-1.ck_2')).toBe(path.join(tmp, 'data', 'checkpoints', 'job-1.ck_2'));
    expect(workloadDir(ctx, 'job-1')).toBe(path.join(tmp, 'data', 'workloads', 'job-1'));
    expect(stagedDir(ctx, 'ck')).toBe(path.join(tmp, 'staging', 'ck'));
    expect(s3Prefix('ck')).toBe('checkpoints/ck/');
  });

  test('a crafted checkpoint id deletes nothing outside the data dir', async () => {
    const ctx = ctxIn(tmp);
    // What '../victim' would name from <data>/checkpoints and from the staging dir.
    const victims = [
      path.join(tmp, 'data', 'victim'),
      path.join(tmp, 'victim'),
      path.join(tmp, 'data', 'victim.fetch'),
    ];
    for (const v of victims) fs.mkdirSync(v, { recursive: true });
    expectInvalid(() => deleteCheckpointDir(ctx, { checkpointId: '../victim' }), 'checkpointId');
    expectInvalid(() => releaseStaging(ctx, { checkpointId: '../victim' }), 'checkpointId');
    await expect(fetchCheckpoint(ctx, { checkpointId: '../victim' })).rejects.toMatchObject({
      type: 'InvalidInput',
      nonRetryable: true,
    });
    for (const v of victims) expect(fs.existsSync(v)).toBe(true);
  });
});

describe('the workload environment', () => {
  const parent = {
    PATH: '/opt/bin:/usr/bin',
    HOME: '/root',
    LANG: 'C.UTF-8',
    TERM: 'xterm',
    TZ: 'UTC',
    LD_LIBRARY_PATH: '/usr/local/nvidia/lib64',
    KYBERNATE_S3_SECRET_ACCESS_KEY: 'secret-value',
    KYBERNATE_S3_ACCESS_KEY_ID: 'key-id',
    AWS_SECRET_ACCESS_KEY: 'aws-secret',
    AWS_PROFILE: 'prod',
    KYBERNATE_TEMPORAL_ADDRESS: 'temporal:7233',
    KYBERNATE_HOME: '/x',
    SSH_AUTH_SOCK: '/tmp/agent',
  };

  test("holds only the documented minimum, the job's variables and KYBERNATE_JOB_ID", () => {
    const env = workloadEnv({
      jobId: 'j1',
      jobEnv: { MY_VAR: 'v', AWS_REGION: 'given-by-the-job' },
      parent,
      home: '/home/u',
    });
    expect(env).toEqual({
      PATH: '/opt/bin:/usr/bin',
      LD_LIBRARY_PATH: '/usr/local/nvidia/lib64',
      LANG: 'C.UTF-8',
      TZ: 'UTC',
      HOME: '/home/u',
      MY_VAR: 'v',
      AWS_REGION: 'given-by-the-job',
      KYBERNATE_JOB_ID: 'j1',
    });
    expect(Object.values(env)).not.toContain('secret-value');
    expect(Object.values(env)).not.toContain('aws-secret');
  });

  test('a PATH even when the agent has none', () => {
    expect(workloadEnv({ jobId: 'j', parent: {}, home: '/' }).PATH).toBe(DEFAULT_PATH);
  });

  test.each([
    ['1BAD', 'env.1BAD'],
    ['A=B', 'env.A=B'],
    ['KYBERNATE_JOB_ID', 'env.KYBERNATE_JOB_ID'],
  ])('job variable %j is refused naming the field', (name, field) => {
    expectInvalid(() => workloadEnv({ jobId: 'j', jobEnv: { [name]: 'v' }, parent, home: '/' }), field);
  });

  test('a value with a NUL byte is refused', () => {
    expectInvalid(() => workloadEnv({ jobId: 'j', jobEnv: { OK: 'a\0b' }, parent, home: '/' }), 'env.OK');
  });
});

describe('what a run resolves before it spawns', () => {
  test('a relative command resolves against the working directory, a bare name through PATH', () => {
    fs.mkdirSync(path.join(tmp, 'bin'));
    const script = path.join(tmp, 'bin', 'tool');
    fs.writeFileSync(script, '#!/bin/sh\n', { mode: 0o755 });
    expect(resolveExecutable('bin/tool', tmp, '', null)).toBe(script);
    expect(resolveExecutable('./tool', path.join(tmp, 'bin'), '', null)).toBe(script);
    expect(resolveExecutable('tool', '/', `/nonexistent:${path.join(tmp, 'bin')}`, null)).toBe(script);
    expect(resolveExecutable('sh', '/', DEFAULT_PATH, null)).toMatch(/\/sh$/);
  });

  test('missing, non-executable or a directory: StartFailure with the reason', () => {
    const plain = path.join(tmp, 'plain.txt');
    fs.writeFileSync(plain, 'x', { mode: 0o644 });
    const cases: [string, RegExp][] = [
      ['/nonexistent/prog', /\/nonexistent\/prog no such file/],
      ['no-such-program-kyb', /not found in PATH/],
      [plain, /is not executable \(mode 644\)/],
      [tmp, /is a directory/],
    ];
    for (const [cmd, why] of cases) {
      expect(() => resolveExecutable(cmd, '/', DEFAULT_PATH, null)).toThrow(why);
      try {
        resolveExecutable(cmd, '/', DEFAULT_PATH, null);
      } catch (e) {
        expect((e as ApplicationFailure).type).toBe('StartFailure');
      }
    }
  });

  test('executable for root is not enough for another user: the mode bits are checked for the user', () => {
    const ownerOnly = path.join(tmp, 'owner-only');
    fs.writeFileSync(ownerOnly, '#!/bin/sh\n', { mode: 0o700 });
    expect(resolveExecutable(ownerOnly, '/', '', null)).toBe(ownerOnly);
    expect(() => resolveExecutable(ownerOnly, '/', '', { uid: 65534, gid: 65534, home: '/' })).toThrow(
      /not executable by uid 65534/,
    );
  });

  test('cwd must be an absolute, existing directory', () => {
    expect(checkCwd(tmp)).toBe(tmp);
    expectInvalid(() => checkCwd('relative/dir'), 'cwd');
    expectInvalid(() => checkCwd(path.join(tmp, 'missing')), 'cwd');
    fs.writeFileSync(path.join(tmp, 'f'), '');
    expectInvalid(() => checkCwd(path.join(tmp, 'f')), 'cwd');
  });

  test("--user: numeric, not root; group and HOME from the node's passwd when it knows the user", () => {
    const passwd = path.join(tmp, 'passwd');
    fs.writeFileSync(passwd, 'root:x:0:0:root:/root:/bin/sh\nsvc:x:1234:4321:svc:/srv/svc:/bin/sh\n');
    expect(resolveRunAs(undefined, passwd)).toBeNull();
    expect(resolveRunAs({ uid: 1234 }, passwd)).toEqual({ uid: 1234, gid: 4321, home: '/srv/svc' });
    expect(resolveRunAs({ uid: 1234, gid: 7 }, passwd)).toEqual({ uid: 1234, gid: 7, home: '/srv/svc' });
    expect(resolveRunAs({ uid: 777 }, passwd)).toEqual({ uid: 777, gid: 777, home: '/' });
    expectInvalid(() => resolveRunAs({ uid: 0 }, passwd), 'user.uid');
    expectInvalid(() => resolveRunAs({ uid: -1 }, passwd), 'user.uid');
    expectInvalid(() => resolveRunAs({ uid: 1.5 }, passwd), 'user.uid');
    expectInvalid(() => resolveRunAs({ uid: 5, gid: -2 }, passwd), 'user.gid');
  });
});

describe('the pid file', () => {
  test('JSON with the start time, and the old plain number still read', () => {
    const f = path.join(tmp, 'pid');
    writePidFile(f, { pid: 4242, startTime: 987654 });
    expect(JSON.parse(fs.readFileSync(f, 'utf8'))).toEqual({ pid: 4242, startTime: 987654 });
    expect(readPidFile(f)).toEqual({ pid: 4242, startTime: 987654 });
    fs.writeFileSync(f, '31337\n');
    expect(readPidFile(f)).toEqual({ pid: 31337 });
    fs.writeFileSync(f, 'garbage');
    expect(readPidFile(f)).toBeNull();
    expect(readPidFile(path.join(tmp, 'missing'))).toBeNull();
  });
});

describe('a process tree, as a workload under an init is', () => {
  test("the files and CPU time of the children count, not only the root's", async () => {
    const out = path.join(tmp, 'child-output.log');
    // The root only waits; its child holds the output file open and burns CPU.
    const root = spawn(
      '/bin/sh',
      [
        '-c',
        `python3 -c "
import time
f = open('${out}', 'a')
end = time.time() + 60
while time.time() < end:
    sum(range(10000))
" & wait`,
      ],
      { stdio: 'ignore' },
    );
    try {
      const pid = root.pid!;
      let tree: number[] = [];
      for (let i = 0; i < 100 && tree.length < 2; i++) {
        await new Promise((r) => setTimeout(r, 50));
        tree = processTree(pid);
      }
      expect(tree[0]).toBe(pid);
      expect(tree.length).toBeGreaterThanOrEqual(2);
      for (let i = 0; i < 100 && !writableFiles(pid).includes(out); i++) await new Promise((r) => setTimeout(r, 50));
      expect(writableFiles(pid)).toContain(out);
      const before = treeCpuTicks(pid);
      await new Promise((r) => setTimeout(r, 500));
      expect(treeCpuTicks(pid)).toBeGreaterThan(before);
    } finally {
      for (const p of processTree(root.pid!).reverse()) {
        try {
          process.kill(p, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
    }
  });
});
