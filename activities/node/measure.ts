import * as fs from 'node:fs';
import * as path from 'node:path';
import type { NodeContext } from './context';
import { listGpus } from './cuda';
import { computeProcesses, gpuMemory } from './nvml';
import { processTree } from './process';

/** What NVML says the process tree of a workload holds in device memory, measured right before its CUDA checkpoint. */
export interface VramMeasurement {
  /** Sum over the tree's pids and all GPUs (NVML's used memory per process). */
  bytes: number;
  /** The GPU holding most of it (the one a restore must match), null when the tree holds none. */
  gpuIndex: number | null;
  gpuUuid: string | null;
  gpuModel: string | null;
  perGpu: { index: number; bytes: number }[];
}

/** Per GPU: nvmlDeviceGetComputeRunningProcesses, summing the used memory of the tree's pids. Null without NVML. */
export async function measureTreeVram(pid: number): Promise<VramMeasurement | null> {
  const tree = new Set(processTree(pid));
  const gpus = await listGpus();
  if (gpus.length === 0) return null;
  const perGpu: VramMeasurement['perGpu'] = [];
  for (const g of gpus) {
    const procs = await computeProcesses(g.index);
    if (!procs) return null;
    let bytes = 0;
    for (const [p, b] of procs) if (tree.has(p)) bytes += b;
    perGpu.push({ index: g.index, bytes });
  }
  const top = perGpu.reduce<VramMeasurement['perGpu'][number] | null>(
    (best, g) => (g.bytes > 0 && (!best || g.bytes > best.bytes) ? g : best),
    null,
  );
  const gpu = top ? (gpus.find((g) => g.index === top.index) ?? null) : null;
  const uuid = top ? ((await gpuMemory(top.index))?.uuid ?? null) : null;
  return {
    bytes: perGpu.reduce((s, g) => s + g.bytes, 0),
    gpuIndex: top?.index ?? null,
    gpuUuid: uuid,
    gpuModel: gpu?.name ?? null,
    perGpu,
  };
}

/** Kept on the node between the CUDA checkpoint (which measures) and the seal (which records it in metadata.json). */
const measurementFile = (ctx: NodeContext, checkpointId: string): string =>
  path.join(ctx.dataDir, 'vram-measured', `${checkpointId}.json`);

export function saveMeasurement(ctx: NodeContext, checkpointId: string, m: VramMeasurement): void {
  fs.mkdirSync(path.dirname(measurementFile(ctx, checkpointId)), { recursive: true });
  fs.writeFileSync(measurementFile(ctx, checkpointId), JSON.stringify(m));
}

export function loadMeasurement(ctx: NodeContext, checkpointId: string): VramMeasurement | null {
  try {
    return JSON.parse(fs.readFileSync(measurementFile(ctx, checkpointId), 'utf8')) as VramMeasurement;
  } catch {
    return null;
  }
}
