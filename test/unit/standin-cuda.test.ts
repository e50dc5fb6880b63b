import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import koffi from 'koffi';
import { ApplicationFailure } from '@temporalio/activity';
import {
  callAsync,
  cudaApi,
  type CudaApi,
  cudaState,
  cudaStep,
  driverKind,
  holdsCuda,
  listGpus,
} from '../../activities/node/cuda';
import { gpuMemory } from '../../activities/node/nvml';
import { ErrorType } from '../../common/errors';
import { REPO_ROOT } from '../../deploy/local/paths';
import { ensureStandinCuda } from '../../deploy/local/standin';
import { until } from '../support/stack';

/**
 * The agent's koffi bindings (activities/node/cuda.ts, nvml.ts) against the STAND-IN driver
 * (deploy/native/standin-cuda): signatures, error strings, the documented state transitions and the codes for
 * wrong ones, the lock's timeout, OOM on restore, and that a slow driver call leaves the event loop free.
 * It proves our calls and their handling, not NVIDIA's driver (test/gpu does that on a device).
 */
const MiB = 1024 * 1024;
const TOTAL = 256 * MiB;
const libDir = ensureStandinCuda();
const deviceDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kybernate-standin-unit-'));
// The driver reads these at each call (the agent's environment in production). Through libc: jest gives the
// test a copy of process.env that native code never sees.
const setenv = koffi.load('libc.so.6').func('int setenv(const char *, const char *, int)') as (
  k: string,
  v: string,
  o: number,
) => number;
setenv('KYBERNATE_STANDIN_DIR', deviceDir, 1);
setenv('KYBERNATE_STANDIN_TOTAL_BYTES', String(TOTAL), 1);
// dlopen reads LD_LIBRARY_PATH only at process start: load the stand-in by path once, and cuda.ts's
// koffi.load('libcuda.so.1') then finds it by its soname, as the agent finds it through LD_LIBRARY_PATH.
koffi.load(path.join(libDir, 'libcuda.so.1'));
koffi.load(path.join(libDir, 'libnvidia-ml.so.1'));

const conf = (text: string): void => fs.writeFileSync(path.join(deviceDir, 'standin.conf'), text);
const workloads: ChildProcess[] = [];
const logs = new Map<number, string>();

/** A Python process holding a stand-in context with `mib` MiB of "VRAM" (deploy/workloads/standin_gpu.py). */
async function workload(mib: number, seed: number): Promise<number> {
  const log = path.join(deviceDir, `w-${seed}.log`);
  const out = fs.openSync(log, 'w');
  const child = spawn(
    'python3',
    [path.join(REPO_ROOT, 'deploy', 'workloads', 'standin_gpu.py'), String(mib), String(seed), '0.05', '4'],
    {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LD_LIBRARY_PATH: libDir, KYBERNATE_STANDIN_DIR: deviceDir },
      stdio: ['ignore', out, out],
    },
  );
  fs.closeSync(out);
  workloads.push(child);
  const pid = child.pid!;
  logs.set(pid, log);
  await until(
    `workload ${pid} holds its stand-in context`,
    () => fs.existsSync(path.join(deviceDir, `vram-${pid}`)) && cudaState(pid) === 'running',
    20000,
    50,
  );
  return pid;
}
const verifies = (pid: number): string[] =>
  fs
    .readFileSync(logs.get(pid)!, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('verify '));

let a: CudaApi;
const args = (): Buffer => Buffer.alloc(64);
const call = (fn: CudaApi['cuCheckpointProcessLock'], pid: number, b: Buffer | null = args()): Promise<number> =>
  callAsync(fn, pid, b);
const errorString = (code: number): [number, string | null] => {
  const out: [string | null] = [null];
  const rc = a.cuGetErrorString(code, out);
  return [rc, out[0]];
};

beforeAll(() => {
  const api = cudaApi();
  if (!api) throw new Error('the stand-in libcuda.so.1 did not load');
  a = api;
});
afterAll(() => {
  for (const w of workloads) w.kill('SIGKILL');
  fs.rmSync(deviceDir, { recursive: true, force: true });
});
beforeEach(() => conf(''));

test('the driver says it is the stand-in; error strings and codes are those of the driver API', () => {
  expect(driverKind()).toBe('standin');
  expect(a.standin).toMatch(/^kybernate-standin-cuda/);
  expect(errorString(0)).toEqual([0, 'no error']);
  expect(errorString(2)).toEqual([0, 'out of memory']);
  expect(errorString(401)).toEqual([0, 'the operation cannot be performed in the present state']);
  expect(errorString(909)).toEqual([0, 'the operation timed out']);
  // An unknown code: CUDA_ERROR_INVALID_VALUE and no string, as documented.
  expect(errorString(123456)).toEqual([1, null]);
  expect(a.cuInit(1)).toBe(1);
});

test('device queries (async) give the declared stand-in device; NVML free VRAM counts live processes', async () => {
  // Control files of a process that is gone, a minute old: the stand-in NVML's init (the agent's) removes them.
  const dead = spawnSync('true').pid!;
  const ctl = '/tmp/kybernate-standin-ctl';
  // On a fresh host nothing has made the driver's control directory yet: made as the driver makes it (sticky, shared).
  if (!fs.existsSync(ctl)) {
    fs.mkdirSync(ctl, { recursive: true });
    fs.chmodSync(ctl, 0o1777);
  }
  const stale = ['state', 'resp'].map((k) => path.join(ctl, `${dead}.${k}`));
  for (const f of stale) {
    fs.writeFileSync(f, '0 1 0\n');
    fs.utimesSync(f, new Date(Date.now() - 120000), new Date(Date.now() - 120000));
  }
  const gpus = await listGpus();
  expect(gpus).toEqual([{ index: 0, name: 'Kybernate stand-in GPU (not a real device)', totalVramBytes: TOTAL }]);
  const dev = new Int32Array(1);
  expect(await callAsync(a.cuDeviceGet, dev, 1)).toBe(101); // CUDA_ERROR_INVALID_DEVICE
  const before = await gpuMemory(0);
  expect(stale.filter((f) => fs.existsSync(f))).toEqual([]);
  expect(before?.uuid).toMatch(/^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  const pid = await workload(16, 11);
  const held = await gpuMemory(0);
  expect(held?.totalBytes).toBe(TOTAL);
  expect(before!.freeBytes - held!.freeBytes).toBe(16 * MiB);
  process.kill(pid, 'SIGKILL');
  await until(
    'a dead process frees its stand-in memory',
    async () => (await gpuMemory(0))?.freeBytes === before!.freeBytes,
    10000,
    50,
  );
});

test('the documented transitions, and CUDA_ERROR_ILLEGAL_STATE for every wrong one', async () => {
  const pid = await workload(16, 21);
  expect(holdsCuda(pid)).toBe(true);
  const free0 = (await gpuMemory(0))!.freeBytes;
  expect(await call(a.cuCheckpointProcessCheckpoint, pid)).toBe(401); // running: lock first
  expect(await call(a.cuCheckpointProcessRestore, pid)).toBe(401);
  expect(await call(a.cuCheckpointProcessUnlock, pid)).toBe(401);
  expect(await call(a.cuCheckpointProcessLock, pid)).toBe(0);
  expect(cudaState(pid)).toBe('locked');
  expect(await call(a.cuCheckpointProcessLock, pid)).toBe(401);
  expect(await call(a.cuCheckpointProcessRestore, pid)).toBe(401);
  expect(await call(a.cuCheckpointProcessCheckpoint, pid)).toBe(0);
  expect(cudaState(pid)).toBe('checkpointed');
  // VRAM moved into the process's host memory: the device file is gone and its bytes are free again.
  expect(fs.existsSync(path.join(deviceDir, `vram-${pid}`))).toBe(false);
  expect((await gpuMemory(0))!.freeBytes).toBe(free0 + 16 * MiB);
  expect(await call(a.cuCheckpointProcessUnlock, pid)).toBe(401);
  expect(await call(a.cuCheckpointProcessCheckpoint, pid)).toBe(401);
  expect(await call(a.cuCheckpointProcessRestore, pid)).toBe(0);
  expect(cudaState(pid)).toBe('locked');
  expect(await call(a.cuCheckpointProcessUnlock, pid)).toBe(0);
  expect(cudaState(pid)).toBe('running');
  const seen = verifies(pid).length;
  await until('the workload reads its VRAM back after the round trip', () => verifies(pid).length > seen, 10000, 50);
  expect(
    verifies(pid)
      .slice(seen)
      .every((l) => l.includes('vram_ok=True')),
  ).toBe(true);
});

test('bad arguments and processes without a context are refused with the documented codes', async () => {
  const out = new Int32Array(1);
  expect(a.cuCheckpointProcessGetState(0, out)).toBe(1); // CUDA_ERROR_INVALID_VALUE
  expect(await call(a.cuCheckpointProcessLock, -5)).toBe(1);
  // This jest process maps the stand-in but holds no context.
  expect(a.cuCheckpointProcessGetState(process.pid, out)).toBe(500); // CUDA_ERROR_NOT_FOUND
  expect(await call(a.cuCheckpointProcessLock, process.pid)).toBe(500);
  const pid = await workload(4, 31);
  const bad = args();
  bad.writeUInt32LE(1, 4); // reserved0 must be zero
  expect(await call(a.cuCheckpointProcessLock, pid, bad)).toBe(1);
  expect(await call(a.cuCheckpointProcessLock, pid, null)).toBe(0); // args are optional
  expect(await call(a.cuCheckpointProcessUnlock, pid, null)).toBe(0);
  // cudaStep on a tree without CUDA skips, and says so.
  const plain = spawn('sleep', ['30']);
  workloads.push(plain);
  expect(await cudaStep('lock', plain.pid!)).toEqual({
    outcome: 'skipped',
    detail: `no process in the tree of pid ${plain.pid} holds a CUDA context`,
  });
});

test('a lock whose timeoutMs expires returns CUDA_ERROR_TIMEOUT and leaves the process running (CudaTimeout)', async () => {
  const pid = await workload(4, 41);
  conf('faults=lock-hang\n');
  const t0 = Date.now();
  const err = await cudaStep('lock', pid, 700).catch((e: unknown) => e);
  expect(Date.now() - t0).toBeGreaterThanOrEqual(700);
  expect(err).toBeInstanceOf(ApplicationFailure);
  expect((err as ApplicationFailure).type).toBe(ErrorType.CudaTimeout);
  expect((err as ApplicationFailure).message).toContain('CUresult 909 (the operation timed out)');
  expect(cudaState(pid)).toBe('running');
  conf('');
  expect((await cudaStep('lock', pid)).outcome).toBe('done');
  expect((await cudaStep('unlock', pid)).outcome).toBe('done');
});

test('OUT_OF_MEMORY on restore leaves the process failed: restore and unlock fail afterwards', async () => {
  const pid = await workload(4, 51);
  expect((await cudaStep('lock', pid)).outcome).toBe('done');
  expect((await cudaStep('checkpoint', pid)).detail).toContain('state now checkpointed');
  conf('faults=restore-oom\n');
  const err = await cudaStep('restore', pid).catch((e: unknown) => e);
  expect((err as ApplicationFailure).type).toBe(ErrorType.CudaOutOfMemory);
  expect(cudaState(pid)).toBe('failed');
  conf('');
  expect(await call(a.cuCheckpointProcessRestore, pid)).toBe(401);
  expect(await call(a.cuCheckpointProcessUnlock, pid)).toBe(401);
  await until(
    'the workload sees its context fail',
    () => verifies(pid).some((l) => l.includes('vram_ok=False')),
    10000,
    50,
  );
});

test('a restore that does not fit the device runs out of memory, as a real one would', async () => {
  const pid = await workload(64, 61);
  await cudaStep('lock', pid);
  await cudaStep('checkpoint', pid);
  const filler = await workload(200, 62); // 200 + 64 MiB > 256 MiB
  const err = await cudaStep('restore', pid).catch((e: unknown) => e);
  expect((err as ApplicationFailure).type).toBe(ErrorType.CudaOutOfMemory);
  process.kill(filler, 'SIGKILL');
});

test('a slow driver call runs off the event loop: timers keep firing while it runs', async () => {
  const pid = await workload(8, 71);
  conf('faults=checkpoint-delay-ms=1500\n');
  await cudaStep('lock', pid);
  let ticks = 0;
  const timer = setInterval(() => ticks++, 50);
  const t0 = Date.now();
  const r = await cudaStep('checkpoint', pid, 10000, 200);
  clearInterval(timer);
  const took = Date.now() - t0;
  expect(took).toBeGreaterThanOrEqual(1500);
  expect(r.detail).toContain('state now checkpointed');
  // A call on the event loop would have let no timer fire for 1.5 s.
  expect(ticks).toBeGreaterThanOrEqual(Math.floor(took / 50 / 2));
  await cudaStep('restore', pid);
  await cudaStep('unlock', pid);
  expect(cudaState(pid)).toBe('running');
});

test('time is proportional to the size (ns per byte)', async () => {
  const pid = await workload(32, 81);
  conf('ns_per_byte=40\n'); // 32 MiB * 40 ns = 1.34 s
  await cudaStep('lock', pid);
  const t0 = Date.now();
  await cudaStep('checkpoint', pid);
  expect(Date.now() - t0).toBeGreaterThanOrEqual(1300);
  conf('ns_per_byte=0\n');
  const t1 = Date.now();
  await cudaStep('restore', pid);
  expect(Date.now() - t1).toBeLessThan(1300);
  await cudaStep('unlock', pid);
});
