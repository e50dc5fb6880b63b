import koffi from 'koffi';

/** Free VRAM comes from NVML: reading it through CUDA would need a context, which itself takes VRAM. */
interface NvmlApi {
  init(): number;
  handle(index: number, out: [unknown]): number;
  memory(handle: unknown, out: BigUint64Array): number;
  uuid(handle: unknown, buf: Buffer, len: number): number;
}
let nvml: NvmlApi | null | undefined;

function load(): NvmlApi | null {
  if (nvml !== undefined) return nvml;
  try {
    const lib = koffi.load('libnvidia-ml.so.1');
    const Handle = koffi.pointer('nvmlDevice_t', koffi.opaque());
    nvml = {
      init: lib.func('int nvmlInit_v2()') as NvmlApi['init'],
      handle: lib.func('nvmlDeviceGetHandleByIndex_v2', 'int', ['uint', koffi.out(koffi.pointer(Handle))]) as NvmlApi['handle'],
      // nvmlMemory_t is { total, free, used } as unsigned long long.
      memory: lib.func('nvmlDeviceGetMemoryInfo', 'int', [Handle, koffi.out(koffi.pointer('uint64_t'))]) as NvmlApi['memory'],
      uuid: lib.func('nvmlDeviceGetUUID', 'int', [Handle, koffi.out(koffi.pointer('uint8_t')), 'uint']) as NvmlApi['uuid'],
    };
    if (nvml.init() !== 0) nvml = null;
  } catch {
    nvml = null;
  }
  return nvml;
}

export function gpuMemory(index: number): { uuid: string; totalBytes: number; freeBytes: number } | null {
  const api = load();
  if (!api) return null;
  const h: [unknown] = [null];
  if (api.handle(index, h) !== 0) return null;
  const mem = new BigUint64Array(3);
  if (api.memory(h[0], mem) !== 0) return null;
  const buf = Buffer.alloc(96);
  api.uuid(h[0], buf, 96);
  return { uuid: buf.toString('utf8').replace(/\0.*$/s, ''), totalBytes: Number(mem[0]), freeBytes: Number(mem[1]) };
}
