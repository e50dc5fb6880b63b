import * as fs from 'node:fs';
import koffi from 'koffi';
import { ApplicationFailure } from '@temporalio/activity';
import { ErrorType } from '../../common/errors';
import type { CudaStepResult } from '../../common/checkpoint';
import { processTree } from './process';
import { heartbeat } from './run-tool';

/** A driver function as koffi binds it: callable in place, or on koffi's worker thread with a callback. */
export type Bound<A extends unknown[]> = ((...args: A) => number) & {
  async: (...args: [...A, (err: unknown, rc: number) => void]) => void;
};

/**
 * The CUDA driver's process checkpoint API (CUDA 12.8+ / driver 570+), called straight from libcuda.so.1.
 * Every *Args struct is 64 bytes; only the lock's timeoutMs (offset 0) is set, the rest is reserved and zero.
 * The checkpoint steps and device queries run on koffi's worker thread (`.async`): the real driver takes
 * seconds to tens of seconds for large VRAM, and the agent's event loop must keep heartbeating meanwhile.
 */
export interface CudaApi {
  cuInit: Bound<[flags: number]>;
  cuGetErrorString: Bound<[code: number, out: [string | null]]>;
  cuCheckpointProcessGetState: Bound<[pid: number, out: Int32Array]>;
  cuCheckpointProcessLock: Bound<[pid: number, args: Buffer | null]>;
  cuCheckpointProcessCheckpoint: Bound<[pid: number, args: Buffer | null]>;
  cuCheckpointProcessRestore: Bound<[pid: number, args: Buffer | null]>;
  cuCheckpointProcessUnlock: Bound<[pid: number, args: Buffer | null]>;
  cuDeviceGetCount: Bound<[out: Int32Array]>;
  cuDeviceGet: Bound<[out: Int32Array, ordinal: number]>;
  cuDeviceGetName: Bound<[name: Buffer, len: number, dev: number]>;
  cuDeviceTotalMem_v2: Bound<[out: BigUint64Array, dev: number]>;
  cuDriverGetVersion: Bound<[out: Int32Array]>;
  /** cuCheckpointProcessRestore with CUDA 13's args (driver 580+): GPU UUID pairs, old -> new. */
  cuCheckpointProcessRestoreRemap: Bound<[pid: number, args: RestoreArgs13]>;
  /** The stand-in driver for tests (deploy/native/standin-cuda) says so here; the real one has no such symbol. */
  standin: string | null;
}

/**
 * CUDA 13's CUcheckpointRestoreArgs (cuda.h, driver API docs): { CUcheckpointGpuPair *gpuPairs; unsigned int
 * gpuPairsCount; unsigned int padding0; CUcheckpointCustomStorageInfo **customStorageInfo_out; char reserved[40] }
 * = 64 bytes; CUcheckpointGpuPair is { CUuuid oldUuid; CUuuid newUuid } = 32 bytes. CUDA 12.8's struct is all
 * reserved: these fields are only ever set for a driver of 580 or newer.
 */
export interface RestoreArgs13 {
  gpuPairs: unknown;
  gpuPairsCount: number;
  padding0: number;
  customStorageInfo_out: null;
  reserved: number[];
}
// Anonymous koffi types: a named one cannot be declared twice in a process (jest loads this module once per test file).
const GpuPair = koffi.struct({ oldUuid: koffi.array('uint8_t', 16), newUuid: koffi.array('uint8_t', 16) });
const RestoreArgs13Type = koffi.struct({
  gpuPairs: koffi.pointer(GpuPair),
  gpuPairsCount: 'uint',
  padding0: 'uint',
  customStorageInfo_out: 'void *',
  reserved: koffi.array('uint8_t', 40),
});
export const RESTORE_ARGS_SIZE = koffi.sizeof(RestoreArgs13Type);
export const GPU_PAIR_SIZE = koffi.sizeof(GpuPair);

/** NVML's "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" as the 16 bytes of a CUuuid. */
export function uuidBytes(uuid: string): number[] {
  const hex = uuid.replace(/^GPU-/, '').replace(/-/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new Error(`not a GPU UUID: '${uuid}'`);
  return [...Buffer.from(hex, 'hex')];
}

let api: CudaApi | null | undefined;
let loadError = '';

export function cudaApi(): CudaApi | null {
  if (api !== undefined) return api;
  try {
    // Found like any program finds the driver: the loader's path (LD_LIBRARY_PATH, ld.so.cache).
    const lib = koffi.load('libcuda.so.1');
    const f = <A extends unknown[]>(sig: string): Bound<A> => lib.func(sig) as unknown as Bound<A>;
    let standin: string | null = null;
    try {
      standin = (lib.func('const char *kybernateStandinVersion()') as () => string)();
    } catch {
      standin = null; // the real driver
    }
    api = {
      cuInit: f('int cuInit(unsigned int)'),
      cuGetErrorString: f('int cuGetErrorString(int, _Out_ const char **)'),
      cuCheckpointProcessGetState: f('int cuCheckpointProcessGetState(int, _Out_ int *)'),
      cuCheckpointProcessLock: f('int cuCheckpointProcessLock(int, void *)'),
      cuCheckpointProcessCheckpoint: f('int cuCheckpointProcessCheckpoint(int, void *)'),
      cuCheckpointProcessRestore: f('int cuCheckpointProcessRestore(int, void *)'),
      cuCheckpointProcessUnlock: f('int cuCheckpointProcessUnlock(int, void *)'),
      cuDeviceGetCount: f('int cuDeviceGetCount(_Out_ int *)'),
      cuDeviceGet: f('int cuDeviceGet(_Out_ int *, int)'),
      cuDeviceGetName: f('int cuDeviceGetName(_Out_ uint8_t *, int, int)'),
      cuDeviceTotalMem_v2: f('int cuDeviceTotalMem_v2(_Out_ uint64_t *, int)'),
      cuDriverGetVersion: f('int cuDriverGetVersion(_Out_ int *)'),
      cuCheckpointProcessRestoreRemap: lib.func('cuCheckpointProcessRestore', 'int', [
        'int',
        koffi.pointer(RestoreArgs13Type),
      ]) as unknown as CudaApi['cuCheckpointProcessRestoreRemap'],
      standin,
    };
    const rc = api.cuInit(0);
    if (rc !== 0) {
      loadError = `cuInit returned ${rc}`;
      api = null;
    }
  } catch (e) {
    loadError = (e as Error).message;
    api = null;
  }
  return api;
}

/** A driver call on koffi's worker thread: the event loop stays free (timers, heartbeats, other activities). */
export function callAsync<A extends unknown[]>(fn: Bound<A>, ...args: A): Promise<number> {
  return new Promise((resolve, reject) =>
    fn.async(...args, (err: unknown, rc: number) => (err ? reject(err as Error) : resolve(rc))),
  );
}

/** Whether the agent talks to the stand-in driver for tests rather than NVIDIA's (null: no driver at all). */
export function driverKind(): 'nvidia' | 'standin' | null {
  const a = cudaApi();
  return a === null ? null : a.standin !== null ? 'standin' : 'nvidia';
}

export const cudaUnavailableReason = (): string => loadError;

/** Whether the process has the CUDA driver mapped, i.e. may hold a CUDA context. Readable without a driver. */
export function holdsCuda(pid: number): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/maps`, 'utf8').includes('libcuda.so');
  } catch {
    return false;
  }
}

function check(a: CudaApi, rc: number, what: string, pid: number): void {
  if (rc === 0) return;
  const msg: [string | null] = [null];
  a.cuGetErrorString(rc, msg);
  // OUT_OF_MEMORY: the restore can't fit here; TIMEOUT: a lock that did not get the process in time (it is left
  // running); other codes are treated as node-local failures.
  throw ApplicationFailure.create({
    message: `${what}(pid ${pid}) failed: CUresult ${rc} (${msg[0] ?? 'unknown'})`,
    type:
      rc === CUDA_ERROR_OUT_OF_MEMORY
        ? ErrorType.CudaOutOfMemory
        : rc === CUDA_ERROR_TIMEOUT
          ? ErrorType.CudaTimeout
          : ErrorType.CudaError,
    nonRetryable: true,
    details: [{ cuResult: rc }],
  });
}

export type CudaOp = 'lock' | 'checkpoint' | 'restore' | 'unlock';
const STATE_NAMES = ['running', 'locked', 'checkpointed', 'failed'];

/** Driver states in which a step has already happened to a process: it is left alone (a retried step, a half-done tree). */
const DONE_IN: Record<CudaOp, string[]> = {
  lock: ['locked', 'checkpointed'],
  checkpoint: ['checkpointed'],
  restore: ['locked'],
  unlock: ['running'],
};

/** CUresult codes with a meaning of their own to the workflow. */
const CUDA_ERROR_OUT_OF_MEMORY = 2;
const CUDA_ERROR_TIMEOUT = 909;

/**
 * One step of lock -> checkpoint -> (criu) -> restore -> unlock, applied to every process of the tree rooted at
 * pid that holds CUDA: a workload runs under an init (the tree's root), so the CUDA context is in a child, and
 * a job may have several processes on the GPU. Skipped only when no process of the tree holds CUDA. The
 * detail names each pid and what was done to it. The driver call runs off the event loop, and the activity
 * heartbeats every heartbeatMs while it runs: a healthy 15 s VRAM copy is not an agent lost.
 */
export async function cudaStep(
  op: CudaOp,
  pid: number,
  timeoutMs = 10000,
  heartbeatMs = 1000,
  remap?: GpuRemap,
): Promise<CudaStepResult> {
  const pids = processTree(pid).filter(holdsCuda);
  if (pids.length === 0)
    return { outcome: 'skipped', detail: `no process in the tree of pid ${pid} holds a CUDA context` };
  const a = cudaApi();
  if (!a) {
    throw ApplicationFailure.nonRetryable(
      `pids ${pids.join(', ')} use CUDA but the driver API is unavailable here: ${loadError}`,
      ErrorType.CudaUnavailable,
    );
  }
  const args = Buffer.alloc(64);
  if (op === 'lock') args.writeUInt32LE(timeoutMs, 0);
  const fn = {
    lock: a.cuCheckpointProcessLock,
    checkpoint: a.cuCheckpointProcessCheckpoint,
    restore: a.cuCheckpointProcessRestore,
    unlock: a.cuCheckpointProcessUnlock,
  }[op];
  const name = `cuCheckpointProcess${op[0].toUpperCase()}${op.slice(1)}`;
  const done: string[] = [];
  for (const p of pids) {
    const before = cudaState(p);
    if (DONE_IN[op].includes(before)) {
      done.push(`pid ${p}: already ${before}`);
      continue;
    }
    const started = Date.now();
    const beat = setInterval(() => heartbeat({ op, pid: p, runningMs: Date.now() - started }), heartbeatMs);
    try {
      if (op === 'restore' && remap)
        check(a, await restoreRemapped(a, p, remap), `${name}[${remap.oldUuid} -> ${remap.newUuid}]`, p);
      else check(a, await callAsync(fn, p, args), name, p);
    } catch (e) {
      // The workflow's compensation walks the tree again; say which processes this step already changed.
      if (e instanceof ApplicationFailure && done.length > 0) e.message += ` (already done: ${done.join('; ')})`;
      throw e;
    } finally {
      clearInterval(beat);
    }
    done.push(`pid ${p}: ${op} ok in ${Date.now() - started} ms, state now ${cudaState(p)}`);
  }
  return { outcome: 'done', detail: `${done.join('; ')}${a.standin ? ` [stand-in driver: ${a.standin}]` : ''}` };
}

/** A restore onto another GPU than the checkpointed one (driver 580+ only): NVML UUIDs. */
export interface GpuRemap {
  oldUuid: string;
  newUuid: string;
}

/** The pair array lives in native memory for the call: the args struct holds a pointer to it. */
async function restoreRemapped(a: CudaApi, pid: number, remap: GpuRemap): Promise<number> {
  const pairs = koffi.alloc(GpuPair, 1);
  try {
    koffi.encode(pairs, GpuPair, { oldUuid: uuidBytes(remap.oldUuid), newUuid: uuidBytes(remap.newUuid) });
    const args: RestoreArgs13 = {
      gpuPairs: pairs,
      gpuPairsCount: 1,
      padding0: 0,
      customStorageInfo_out: null,
      reserved: new Array<number>(40).fill(0),
    };
    return await callAsync(a.cuCheckpointProcessRestoreRemap, pid, args);
  } finally {
    koffi.free(pairs);
  }
}

/**
 * The CUDA state of a workload, whose CUDA processes are children of its init: the one state all of them are
 * in ('none' when no process of the tree holds CUDA), else each pid with its own ('12:locked,13:running').
 */
export function cudaTreeState(root: number): string {
  const states = processTree(root)
    .filter(holdsCuda)
    .map((p) => ({ p, s: cudaState(p) }));
  if (states.length === 0) return 'none';
  return states.every((x) => x.s === states[0].s) ? states[0].s : states.map((x) => `${x.p}:${x.s}`).join(',');
}

export function cudaState(pid: number): string {
  const a = cudaApi();
  if (!a || !holdsCuda(pid)) return 'none';
  const out = new Int32Array(1);
  const rc = a.cuCheckpointProcessGetState(pid, out);
  return rc === 0 ? (STATE_NAMES[out[0]] ?? `state-${out[0]}`) : `error-${rc}`;
}

export interface GpuInfo {
  index: number;
  name: string;
  totalVramBytes: number;
}

/** The driver's devices. Each query runs on koffi's worker thread: a busy driver can take its time. */
export async function listGpus(): Promise<GpuInfo[]> {
  const a = cudaApi();
  if (!a) return [];
  const count = new Int32Array(1);
  if ((await callAsync(a.cuDeviceGetCount, count)) !== 0) return [];
  const gpus: GpuInfo[] = [];
  for (let i = 0; i < count[0]; i++) {
    const dev = new Int32Array(1);
    if ((await callAsync(a.cuDeviceGet, dev, i)) !== 0) continue;
    const name = Buffer.alloc(256);
    await callAsync(a.cuDeviceGetName, name, 256, dev[0]);
    const total = new BigUint64Array(1);
    await callAsync(a.cuDeviceTotalMem_v2, total, dev[0]);
    gpus.push({ index: i, name: name.toString('utf8').replace(/\0.*$/s, ''), totalVramBytes: Number(total[0]) });
  }
  return gpus;
}

/** The CUDA version the driver supports (1000 * major + 10 * minor: 13000 = CUDA 13.0); null without a driver. */
export async function cudaDriverVersion(): Promise<number | null> {
  const a = cudaApi();
  if (!a) return null;
  const v = new Int32Array(1);
  return (await callAsync(a.cuDriverGetVersion, v)) === 0 ? v[0] : null;
}
