import * as fs from 'node:fs';
import { type NodeContext, stagedDir } from './context';

const GiB = 1024 ** 3;

function meminfo(): { availableBytes: number; totalBytes: number } {
  const text = fs.readFileSync('/proc/meminfo', 'utf8');
  const kib = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0) * 1024;
  return { availableBytes: kib('MemAvailable'), totalBytes: kib('MemTotal') };
}

/**
 * Whether `bytes` fit in memory with room to spare: the tmpfs must hold them and the node must keep a
 * reserve (1 GiB or a tenth of its memory) for its workloads. Staged pages are memory the kernel cannot
 * reclaim, so this errs towards the disk.
 */
export function stagingFits(ctx: NodeContext, bytes: number): { fits: boolean; why: string } {
  if (!ctx.stagingDir) return { fits: false, why: 'staging disabled' };
  fs.mkdirSync(ctx.stagingDir, { recursive: true });
  const st = fs.statfsSync(ctx.stagingDir);
  const fsFree = st.bavail * st.bsize;
  const { availableBytes, totalBytes } = meminfo();
  const reserve = Math.max(GiB, totalBytes / 10);
  const need = bytes + 64 * 1024 ** 2;
  if (fsFree < need) return { fits: false, why: `${ctx.stagingDir} has ${fsFree} bytes free, ${need} needed` };
  if (availableBytes - need < reserve)
    return {
      fits: false,
      why: `${availableBytes} bytes of memory available, ${need} needed plus a ${reserve}-byte reserve`,
    };
  return { fits: true, why: `${need} of ${availableBytes} available bytes` };
}

/** Frees the memory a staged checkpoint holds. Idempotent. */
export function releaseStaging(ctx: NodeContext, input: { checkpointId: string }): { released: boolean } {
  const staged = stagedDir(ctx, input.checkpointId);
  if (!staged) return { released: false };
  const had = fs.existsSync(staged) || fs.existsSync(`${staged}.fetch`);
  fs.rmSync(staged, { recursive: true, force: true });
  fs.rmSync(`${staged}.fetch`, { recursive: true, force: true });
  return { released: had };
}
