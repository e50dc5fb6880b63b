import * as fs from 'node:fs';
import * as path from 'node:path';
import { ApplicationFailure } from '@temporalio/activity';
import type { NodeContext } from './context';
import { largestFreeGpu, readInventory } from './inventory';
import { processAlive } from './process';
import { ErrorType } from '../../common/errors';

/**
 * VRAM promised to workloads restored on this node, by pid. On a GPU node the driver's free figure already
 * counts them; on a node with declared capacity this ledger is what makes "free" mean anything.
 */
const ledgerFile = (ctx: NodeContext): string => path.join(ctx.dataDir, 'vram-ledger.json');

export function ledger(ctx: NodeContext): Record<string, number> {
  let l: Record<string, number>;
  try {
    l = JSON.parse(fs.readFileSync(ledgerFile(ctx), 'utf8')) as Record<string, number>;
  } catch {
    return {};
  }
  return Object.fromEntries(Object.entries(l).filter(([pid]) => processAlive(Number(pid))));
}

export function recordVram(ctx: NodeContext, pid: number, bytes: number): void {
  const l = ledger(ctx);
  l[String(pid)] = bytes;
  fs.writeFileSync(ledgerFile(ctx), JSON.stringify(l));
}

export const ledgerBytes = (ctx: NodeContext): number => Object.values(ledger(ctx)).reduce((s, b) => s + b, 0);

/**
 * Right before the CUDA restore: a driver restore that runs out of memory leaves the process unrecoverable,
 * so a node that no longer has the room says so here, while the CRIU image can still be restored elsewhere.
 */
export async function checkVram(
  ctx: NodeContext,
  input: { bytes: number; gpuIndex?: number },
): Promise<{ freeVramBytes: number }> {
  const inv = await readInventory(ctx);
  // One GPU must hold it all (the placement's GPU when it named one): free VRAM is never summed across GPUs.
  const gpu = input.gpuIndex !== undefined ? inv.gpus.find((g) => g.index === input.gpuIndex) : undefined;
  const free = gpu ? gpu.freeVramBytes : largestFreeGpu(inv);
  if (input.bytes > 0 && free < input.bytes) {
    throw ApplicationFailure.create({
      // Which GPU is named only where there is a choice of several.
      message: `node ${ctx.node} has ${free} bytes of VRAM free${inv.gpus.length > 1 ? (gpu ? ` on GPU ${gpu.index}` : ' on its largest GPU') : ''} (${inv.vramSource}), ${input.bytes} needed`,
      type: ErrorType.CudaOutOfMemory,
      nonRetryable: true,
      details: [{ freeVramBytes: free, neededBytes: input.bytes }],
    });
  }
  return { freeVramBytes: free };
}
