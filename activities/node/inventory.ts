import * as fs from 'node:fs';
import { cgroupVersion } from './cgroups';
import type { NodeContext } from './context';
import { criuVersion } from './criu';
import { driverKind, listGpus } from './cuda';
import { gpuMemory } from './nvml';
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
  /** How this node enforces a job's limits (activities/node/cgroups.ts); 'none': it cannot, and refuses jobs that ask for them. */
  cgroups?: 'v1' | 'v2' | 'none';
  reportedAt: string;
}

/** Free VRAM on a node with declared capacity is what the ledger of restored workloads leaves of it. */
export async function readInventory(ctx: NodeContext): Promise<NodeInventory> {
  const gpus: GpuInventory[] = [];
  for (const g of await listGpus()) {
    const mem = await gpuMemory(g.index);
    gpus.push({ index: g.index, uuid: mem?.uuid ?? `gpu-${g.index}`, model: g.name, totalVramBytes: g.totalVramBytes, freeVramBytes: mem?.freeBytes ?? g.totalVramBytes });
  }
  fs.mkdirSync(ctx.dataDir, { recursive: true });
  const st = fs.statfsSync(ctx.dataDir);
  const base = { node: ctx.node, zone: ctx.zone, freeDiskBytes: st.bavail * st.bsize, criuVersion: await criuVersion(ctx), cgroups: cgroupVersion(), reportedAt: new Date().toISOString() };
  if (gpus.length > 0) {
    return { ...base, vramSource: driverKind() === 'standin' ? 'standin' : 'measured', gpus, totalVramBytes: gpus.reduce((s, g) => s + g.totalVramBytes, 0), freeVramBytes: gpus.reduce((s, g) => s + g.freeVramBytes, 0) };
  }
  if (ctx.declaredVramBytes !== null) {
    return { ...base, vramSource: 'declared', gpus: [], totalVramBytes: ctx.declaredVramBytes, freeVramBytes: Math.max(0, ctx.declaredVramBytes - ledgerBytes(ctx)) };
  }
  return { ...base, vramSource: 'none', gpus: [], totalVramBytes: 0, freeVramBytes: 0 };
}
