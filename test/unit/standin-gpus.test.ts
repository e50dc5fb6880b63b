import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import koffi from 'koffi';
import {
  callAsync,
  cudaApi,
  cudaDriverVersion,
  cudaState,
  cudaStep,
  GPU_PAIR_SIZE,
  listGpus,
  RESTORE_ARGS_SIZE,
  uuidBytes,
} from '../../activities/node/cuda';
import { measureTreeVram } from '../../activities/node/measure';
import {
  computeProcesses,
  driverVersions,
  gpuCount,
  gpuMemory,
  NVML_PROCESS_INFO_SIZE,
} from '../../activities/node/nvml';
import { REPO_ROOT } from '../../deploy/local/paths';
import { ensureStandinCuda } from '../../deploy/local/standin';
import { until } from '../support/stack';

/**
 * The per-GPU bindings (device list, UUIDs, driver and CUDA versions, per-process device memory) against the
 * STAND-IN driver with several GPUs (standin.conf gpus=N). Proves our calls and struct layouts as documented
 * in nvml.h / the driver API, not NVIDIA's driver.
 */
const MiB = 1024 * 1024;
const libDir = ensureStandinCuda();
const deviceDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kybernate-standin-gpus-'));
const setenv = koffi.load('libc.so.6').func('int setenv(const char *, const char *, int)') as (
  k: string,
  v: string,
  o: number,
) => number;
setenv('KYBERNATE_STANDIN_DIR', deviceDir, 1);
setenv('KYBERNATE_STANDIN_TOTAL_BYTES', String(256 * MiB), 1);
koffi.load(path.join(libDir, 'libcuda.so.1'));
const nvmlLib = koffi.load(path.join(libDir, 'libnvidia-ml.so.1'));

const conf = (text: string): void => fs.writeFileSync(path.join(deviceDir, 'standin.conf'), text);
const workloads: ChildProcess[] = [];

async function workload(mib: number, seed: number): Promise<number> {
  const child = spawn(
    'python3',
    [path.join(REPO_ROOT, 'deploy', 'workloads', 'standin_gpu.py'), String(mib), String(seed), '0.05', '4'],
    {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', LD_LIBRARY_PATH: libDir, KYBERNATE_STANDIN_DIR: deviceDir },
      stdio: 'ignore',
    },
  );
  workloads.push(child);
  const pid = child.pid!;
  await until(
    `workload ${pid} holds its stand-in context`,
    () => fs.existsSync(path.join(deviceDir, `vram-${pid}`)) && cudaState(pid) === 'running',
    20000,
    50,
  );
  return pid;
}

beforeAll(() => {
  if (!cudaApi()) throw new Error('the stand-in libcuda.so.1 did not load');
});
afterAll(() => {
  for (const w of workloads) w.kill('SIGKILL');
  fs.rmSync(deviceDir, { recursive: true, force: true });
});
beforeEach(() => conf(''));

test('N GPUs, each with its own UUID, model and total; GPU 0 keeps the UUID it had as the only GPU', async () => {
  const single = await gpuMemory(0);
  conf(['gpus=3', 'name.1=NVIDIA A100-SXM4-80GB', `total_bytes.2=${64 * MiB}`].join('\n'));
  expect(await gpuCount()).toBe(3);
  expect(await listGpus()).toEqual([
    { index: 0, name: 'Kybernate stand-in GPU (not a real device)', totalVramBytes: 256 * MiB },
    { index: 1, name: 'NVIDIA A100-SXM4-80GB', totalVramBytes: 256 * MiB },
    { index: 2, name: 'Kybernate stand-in GPU (not a real device)', totalVramBytes: 64 * MiB },
  ]);
  const mems = await Promise.all([0, 1, 2].map((i) => gpuMemory(i)));
  expect(mems[0]?.uuid).toBe(single?.uuid);
  expect(new Set(mems.map((m) => m?.uuid)).size).toBe(3);
  for (const m of mems) expect(m?.uuid).toMatch(/^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  expect(mems[2]?.totalBytes).toBe(64 * MiB);
  expect(await gpuMemory(3)).toBeNull(); // NVML_ERROR_INVALID_ARGUMENT for an index past the count
  const dev = new Int32Array(1);
  expect(await callAsync(cudaApi()!.cuDeviceGet, dev, 3)).toBe(101); // CUDA_ERROR_INVALID_DEVICE
});

test('driver and CUDA versions: NVML and cuDriverGetVersion agree, and follow standin.conf', async () => {
  expect(await driverVersions()).toEqual({ driverVersion: '570.172.08', cudaVersion: 12080 });
  expect(await cudaDriverVersion()).toBe(12080);
  conf('driver_version=580.65.06\ncuda_version=13000\n');
  expect(await driverVersions()).toEqual({ driverVersion: '580.65.06', cudaVersion: 13000 });
  expect(await cudaDriverVersion()).toBe(13000);
});

test('per-process device memory (nvmlDeviceGetComputeRunningProcesses_v3) per GPU, and the tree measurement', async () => {
  conf('gpus=2\n');
  const pid = await workload(16, 31);
  // The same process also "holds" 8 MiB on GPU 1: its device-memory file in that GPU's dir.
  fs.mkdirSync(path.join(deviceDir, 'gpu1'), { recursive: true });
  fs.writeFileSync(path.join(deviceDir, 'gpu1', `vram-${pid}`), Buffer.alloc(8 * MiB));
  expect((await computeProcesses(0))?.get(pid)).toBe(16 * MiB);
  expect((await computeProcesses(1))?.get(pid)).toBe(8 * MiB);
  expect((await gpuMemory(1))?.freeBytes).toBe(248 * MiB);
  const m = await measureTreeVram(pid);
  expect(m).toMatchObject({
    bytes: 24 * MiB,
    gpuIndex: 0,
    gpuModel: 'Kybernate stand-in GPU (not a real device)',
    perGpu: [
      { index: 0, bytes: 16 * MiB },
      { index: 1, bytes: 8 * MiB },
    ],
  });
  expect(m?.gpuUuid).toBe((await gpuMemory(0))?.uuid);
  // A process outside the tree counts nothing (this test's own process would: the workload is its child).
  const other = spawn('sleep', ['30'], { stdio: 'ignore' });
  workloads.push(other);
  expect(await measureTreeVram(other.pid!)).toMatchObject({ bytes: 0, gpuIndex: null, gpuModel: null });

  // The documented sizing protocol and struct layout, called directly: too small a buffer says how many.
  const Handle = koffi.pointer(koffi.opaque());
  const byIndex = nvmlLib.func('nvmlDeviceGetHandleByIndex_v2', 'int', ['uint', koffi.out(koffi.pointer(Handle))]);
  const procs = nvmlLib.func('nvmlDeviceGetComputeRunningProcesses_v3', 'int', [
    Handle,
    koffi.inout(koffi.pointer('uint32_t')),
    'void *',
  ]);
  const h: [unknown] = [null];
  expect(byIndex(0, h)).toBe(0);
  const count = new Uint32Array([0]);
  expect(procs(h[0], count, null)).toBe(7); // NVML_ERROR_INSUFFICIENT_SIZE
  expect(count[0]).toBe(1);
  const buf = Buffer.alloc(2 * NVML_PROCESS_INFO_SIZE);
  count[0] = 2;
  expect(procs(h[0], count, buf)).toBe(0);
  expect(count[0]).toBe(1);
  expect(buf.readUInt32LE(0)).toBe(pid);
  expect(Number(buf.readBigUInt64LE(8))).toBe(16 * MiB);
  expect(buf.readUInt32LE(16)).toBe(0xffffffff); // gpuInstanceId: not a MIG device
});

test('restore onto another GPU: CUDA 13 args carry the old -> new UUID pair; the VRAM lands on the new GPU intact', async () => {
  expect(RESTORE_ARGS_SIZE).toBe(64);
  expect(GPU_PAIR_SIZE).toBe(32);
  conf('gpus=2\ndriver_version=580.65.06\ncuda_version=13000\n');
  const pid = await workload(8, 41);
  const [g0, g1] = [(await gpuMemory(0))!.uuid, (await gpuMemory(1))!.uuid];
  expect(uuidBytes(g0)).toHaveLength(16);
  await cudaStep('lock', pid);
  await cudaStep('checkpoint', pid);
  expect(fs.existsSync(path.join(deviceDir, `vram-${pid}`))).toBe(false);
  // A UUID that names no GPU of this node: CUDA_ERROR_INVALID_DEVICE, and the process stays checkpointed.
  await expect(
    cudaStep('restore', pid, undefined, undefined, {
      oldUuid: g0,
      newUuid: 'GPU-00000000-0000-0000-0000-000000000000',
    }),
  ).rejects.toThrow(/CUresult 101/);
  expect(cudaState(pid)).toBe('checkpointed');
  const r = await cudaStep('restore', pid, undefined, undefined, { oldUuid: g0, newUuid: g1 });
  expect(r.detail).toMatch(/restore ok/);
  expect(fs.statSync(path.join(deviceDir, 'gpu1', `vram-${pid}`)).size).toBe(8 * MiB);
  expect((await computeProcesses(1))?.get(pid)).toBe(8 * MiB);
  expect((await computeProcesses(0))?.has(pid)).toBe(false);
  await cudaStep('unlock', pid);
  expect(cudaState(pid)).toBe('running');
});

test('before CUDA 13 the restore args are all reserved: a GPU pair is refused (INVALID_VALUE), so the agent never sends one there', async () => {
  conf('gpus=2\n');
  const pid = await workload(4, 42);
  const [g0, g1] = [(await gpuMemory(0))!.uuid, (await gpuMemory(1))!.uuid];
  await cudaStep('lock', pid);
  await cudaStep('checkpoint', pid);
  await expect(cudaStep('restore', pid, undefined, undefined, { oldUuid: g0, newUuid: g1 })).rejects.toThrow(
    /CUresult 1 /,
  );
  await cudaStep('restore', pid);
  await cudaStep('unlock', pid);
  expect(fs.existsSync(path.join(deviceDir, `vram-${pid}`))).toBe(true);
});
