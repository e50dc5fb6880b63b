import koffi from 'koffi';
import { type Bound, callAsync } from './cuda';

/** Free VRAM comes from NVML: reading it through CUDA would need a context, which itself takes VRAM. */
interface NvmlApi {
  init: Bound<[]>;
  handle: Bound<[index: number, out: [unknown]]>;
  memory: Bound<[handle: unknown, out: BigUint64Array]>;
  uuid: Bound<[handle: unknown, buf: Buffer, len: number]>;
  count: Bound<[out: Uint32Array]>;
  driverVersion: Bound<[buf: Buffer, len: number]>;
  cudaVersion: Bound<[out: Int32Array]>;
  processes: Bound<[handle: unknown, count: Uint32Array, infos: Buffer | null]>;
}
let nvml: NvmlApi | null | undefined;

function load(): NvmlApi | null {
  if (nvml !== undefined) return nvml;
  try {
    const lib = koffi.load('libnvidia-ml.so.1');
    // Anonymous: a named koffi type cannot be declared twice in one process (jest loads this module per test file).
    const Handle = koffi.pointer(koffi.opaque());
    nvml = {
      init: lib.func('int nvmlInit_v2()') as unknown as NvmlApi['init'],
      handle: lib.func('nvmlDeviceGetHandleByIndex_v2', 'int', [
        'uint',
        koffi.out(koffi.pointer(Handle)),
      ]) as unknown as NvmlApi['handle'],
      // nvmlMemory_t is { total, free, used } as unsigned long long.
      memory: lib.func('nvmlDeviceGetMemoryInfo', 'int', [
        Handle,
        koffi.out(koffi.pointer('uint64_t')),
      ]) as unknown as NvmlApi['memory'],
      uuid: lib.func('nvmlDeviceGetUUID', 'int', [
        Handle,
        koffi.out(koffi.pointer('uint8_t')),
        'uint',
      ]) as unknown as NvmlApi['uuid'],
      count: lib.func('int nvmlDeviceGetCount_v2(_Out_ unsigned int *)') as unknown as NvmlApi['count'],
      driverVersion: lib.func(
        'int nvmlSystemGetDriverVersion(_Out_ uint8_t *, unsigned int)',
      ) as unknown as NvmlApi['driverVersion'],
      cudaVersion: lib.func('int nvmlSystemGetCudaDriverVersion_v2(_Out_ int *)') as unknown as NvmlApi['cudaVersion'],
      // nvmlProcessInfo_t (v2): { uint pid; ull usedGpuMemory; uint gpuInstanceId; uint computeInstanceId } = 24 bytes.
      processes: lib.func('nvmlDeviceGetComputeRunningProcesses_v3', 'int', [
        Handle,
        koffi.inout(koffi.pointer('uint32_t')),
        'void *',
      ]) as unknown as NvmlApi['processes'],
    };
    if (nvml.init() !== 0) nvml = null;
  } catch {
    nvml = null;
  }
  return nvml;
}

/** Each query runs on koffi's worker thread, so a slow driver never stalls the agent's event loop. */
export async function gpuMemory(
  index: number,
): Promise<{ uuid: string; totalBytes: number; freeBytes: number } | null> {
  const api = load();
  if (!api) return null;
  const h: [unknown] = [null];
  if ((await callAsync(api.handle, index, h)) !== 0) return null;
  const mem = new BigUint64Array(3);
  if ((await callAsync(api.memory, h[0], mem)) !== 0) return null;
  const buf = Buffer.alloc(96);
  await callAsync(api.uuid, h[0], buf, 96);
  return { uuid: buf.toString('utf8').replace(/\0.*$/s, ''), totalBytes: Number(mem[0]), freeBytes: Number(mem[1]) };
}

const NVML_ERROR_INSUFFICIENT_SIZE = 7;
/** sizeof(nvmlProcessInfo_t) in nvml.h (v2 layout, used by the _v3 query): pid at 0, usedGpuMemory at 8. */
export const NVML_PROCESS_INFO_SIZE = 24;

export async function gpuCount(): Promise<number | null> {
  const api = load();
  if (!api) return null;
  const n = new Uint32Array(1);
  return (await callAsync(api.count, n)) === 0 ? n[0] : null;
}

/** The kernel driver's version ("580.65.06") and the CUDA version it supports (13000 = 13.0); null without NVML. */
export async function driverVersions(): Promise<{ driverVersion: string; cudaVersion: number } | null> {
  const api = load();
  if (!api) return null;
  const buf = Buffer.alloc(80); // NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE
  if ((await callAsync(api.driverVersion, buf, 80)) !== 0) return null;
  const cuda = new Int32Array(1);
  const rc = await callAsync(api.cudaVersion, cuda);
  return { driverVersion: buf.toString('utf8').replace(/\0.*$/s, ''), cudaVersion: rc === 0 ? cuda[0] : 0 };
}

/** Device memory used per process on GPU `index` (pid -> bytes), from nvmlDeviceGetComputeRunningProcesses_v3. */
export async function computeProcesses(index: number): Promise<Map<number, number> | null> {
  const api = load();
  if (!api) return null;
  const h: [unknown] = [null];
  if ((await callAsync(api.handle, index, h)) !== 0) return null;
  // The list may grow between asking its size and reading it: ask again with the larger size.
  for (let cap = 16, tries = 0; tries < 4; tries++) {
    const count = new Uint32Array([cap]);
    const infos = Buffer.alloc(cap * NVML_PROCESS_INFO_SIZE);
    const rc = await callAsync(api.processes, h[0], count, infos);
    if (rc === NVML_ERROR_INSUFFICIENT_SIZE) {
      cap = count[0] + 8;
      continue;
    }
    if (rc !== 0) return null;
    const out = new Map<number, number>();
    for (let i = 0; i < count[0]; i++) {
      const pid = infos.readUInt32LE(i * NVML_PROCESS_INFO_SIZE);
      out.set(pid, (out.get(pid) ?? 0) + Number(infos.readBigUInt64LE(i * NVML_PROCESS_INFO_SIZE + 8)));
    }
    return out;
  }
  return null;
}
