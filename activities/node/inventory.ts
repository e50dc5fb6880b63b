import * as fs from 'node:fs';
import * as os from 'node:os';
import { cgroupVersion } from './cgroups';
import type { NodeContext } from './context';
import { criuVersion } from './criu';
import { cudaDriverVersion, driverKind, listGpus } from './cuda';
import { driverVersions, gpuMemory } from './nvml';
import { ledgerBytes } from './vram';

export interface GpuInventory {
  index: number;
  uuid: string;
  model: string;
  totalVramBytes: number;
  freeVramBytes: number;
}

export interface NodeInventory {
  node: string;
  zone: string | null;
  /**
   * 'measured': read from the driver; 'declared': given with --declared-vram on a node without a GPU;
   * 'standin': read from the stand-in driver for tests (deploy/native/standin-cuda), not from a GPU.
   */
  vramSource: 'measured' | 'declared' | 'standin' | 'none';
  gpus: GpuInventory[];
  totalVramBytes: number;
  freeVramBytes: number;
  freeDiskBytes: number;
  criuVersion: string;
  /** NVML's driver version ("580.65.06") and the CUDA version it supports (13000); null without a driver. Absent in older reports. */
  driverVersion?: string | null;
  cudaVersion?: number | null;
  /** uname -r: recorded with checkpoints, shown, not checked (CRIU checks what it needs). */
  kernelRelease?: string;
  /** /proc/cpuinfo flags (sorted): a checkpoint's process may use any flag of its source host. */
  cpuFlags?: string[];
  /** How this node enforces a job's limits (activities/node/cgroups.ts); 'none': it cannot, and refuses jobs that ask for them. */
  cgroups?: 'v1' | 'v2' | 'none';
  reportedAt: string;
}

/** The first CPU's flags: the ones a restored process may find missing. */
export function cpuFlags(): string[] {
  try {
    const line = /^flags\s*:\s*(.*)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'));
    return line ? [...new Set(line[1].trim().split(/\s+/))].sort() : [];
  } catch {
    return [];
  }
}

/** The largest single GPU's free VRAM: what one workload can get (never the sum across GPUs). */
export const largestFreeGpu = (inv: Pick<NodeInventory, 'gpus' | 'freeVramBytes'>): number =>
  inv.gpus.length > 0 ? Math.max(...inv.gpus.map((g) => g.freeVramBytes)) : inv.freeVramBytes;

/** Free VRAM on a node with declared capacity is what the ledger of restored workloads leaves of it. */
export async function readInventory(ctx: NodeContext): Promise<NodeInventory> {
  const gpus: GpuInventory[] = [];
  for (const g of await listGpus()) {
    const mem = await gpuMemory(g.index);
    gpus.push({
      index: g.index,
      uuid: mem?.uuid ?? `gpu-${g.index}`,
      model: g.name,
      totalVramBytes: g.totalVramBytes,
      freeVramBytes: mem?.freeBytes ?? g.totalVramBytes,
    });
  }
  fs.mkdirSync(ctx.dataDir, { recursive: true });
  const st = fs.statfsSync(ctx.dataDir);
  const versions = gpus.length > 0 ? await driverVersions() : null;
  const base = {
    node: ctx.node,
    zone: ctx.zone,
    freeDiskBytes: st.bavail * st.bsize,
    criuVersion: await criuVersion(ctx),
    cgroups: cgroupVersion(),
    reportedAt: new Date().toISOString(),
    driverVersion: versions?.driverVersion ?? null,
    cudaVersion: versions?.cudaVersion || (gpus.length > 0 ? await cudaDriverVersion() : null),
    kernelRelease: os.release(),
    cpuFlags: cpuFlags(),
  };
  if (gpus.length > 0) {
    return {
      ...base,
      vramSource: driverKind() === 'standin' ? 'standin' : 'measured',
      gpus,
      totalVramBytes: gpus.reduce((s, g) => s + g.totalVramBytes, 0),
      freeVramBytes: gpus.reduce((s, g) => s + g.freeVramBytes, 0),
    };
  }
  if (ctx.declaredVramBytes !== null) {
    // No GPU to ask: one pseudo-GPU holding the declared capacity, named as declared.
    const free = Math.max(0, ctx.declaredVramBytes - ledgerBytes(ctx));
    return {
      ...base,
      vramSource: 'declared',
      gpus: [
        { index: 0, uuid: 'declared', model: 'declared', totalVramBytes: ctx.declaredVramBytes, freeVramBytes: free },
      ],
      totalVramBytes: ctx.declaredVramBytes,
      freeVramBytes: free,
    };
  }
  return { ...base, vramSource: 'none', gpus: [], totalVramBytes: 0, freeVramBytes: 0 };
}
