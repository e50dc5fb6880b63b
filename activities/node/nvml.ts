import koffi from 'koffi';
import { type Bound, callAsync } from './cuda';

/** Free VRAM comes from NVML: reading it through CUDA would need a context, which itself takes VRAM. */
interface NvmlApi {
  init: Bound<[]>;
  handle: Bound<[index: number, out: [unknown]]>;
  memory: Bound<[handle: unknown, out: BigUint64Array]>;
  uuid: Bound<[handle: unknown, buf: Buffer, len: number]>;
}
let nvml: NvmlApi | null | undefined;

function load(): NvmlApi | null {
  if (nvml !== undefined) return nvml;
  try {
    const lib = koffi.load('libnvidia-ml.so.1');
    const Handle = koffi.pointer('nvmlDevice_t', koffi.opaque());
    nvml = {
      init: lib.func('int nvmlInit_v2()') as unknown as NvmlApi['init'],
      handle: lib.func('nvmlDeviceGetHandleByIndex_v2', 'int', ['uint', koffi.out(koffi.pointer(Handle))]) as unknown as NvmlApi['handle'],
      // nvmlMemory_t is { total, free, used } as unsigned long long.
      memory: lib.func('nvmlDeviceGetMemoryInfo', 'int', [Handle, koffi.out(koffi.pointer('uint64_t'))]) as unknown as NvmlApi['memory'],
      uuid: lib.func('nvmlDeviceGetUUID', 'int', [Handle, koffi.out(koffi.pointer('uint8_t')), 'uint']) as unknown as NvmlApi['uuid'],
    };
    if (nvml.init() !== 0) nvml = null;
  } catch {
    nvml = null;
  }
  return nvml;
}

/** Each query runs on koffi's worker thread, so a slow driver never stalls the agent's event loop. */
export async function gpuMemory(index: number): Promise<{ uuid: string; totalBytes: number; freeBytes: number } | null> {
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
