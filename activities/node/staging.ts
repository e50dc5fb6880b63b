import * as fs from 'node:fs';
import * as path from 'node:path';
import { METADATA_FILE } from '../../common/metadata';
import { type NodeContext, restoreCopyDir, stagedDir } from './context';
import { readMetadata } from './seal';

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

/**
 * Gives a restore its own names for a checkpoint's staged files: hard links, the same pages in memory, no
 * copy. The checkpoint may still be copying them to disk, and each side releases its copy when it is done:
 * with one directory shared, the first release removed what the other still read (a same-node restore of a
 * checkpoint being persisted failed its disk copy; the checkpoint's release could pull the files from under
 * CRIU). Memory is freed when the last name goes. Throws (ENOENT) when the checkpoint released them meanwhile.
 */
export function linkStagedCopy(ctx: NodeContext, checkpointId: string, attemptId?: string): string {
  const from = stagedDir(ctx, checkpointId);
  const to = restoreCopyDir(ctx, checkpointId, attemptId);
  if (!from || !to) throw new Error('staging disabled on this node');
  const md = readMetadata(from);
  const tmp = `${to}.fetch`;
  fs.rmSync(tmp, { recursive: true, force: true });
  try {
    for (const f of [...md.files.map((x) => x.path), METADATA_FILE]) {
      fs.mkdirSync(path.dirname(path.join(tmp, f)), { recursive: true });
      fs.linkSync(path.join(from, f), path.join(tmp, f));
    }
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  fs.rmSync(to, { recursive: true, force: true });
  fs.renameSync(tmp, to);
  return to;
}

/** Whose copy in memory a release frees: the checkpoint's (dumped there), a restore's, or (unnamed) both. */
export type StagedCopy = 'checkpoint' | 'restore';

/**
 * Frees the memory a staged copy holds. Idempotent. A restore's copy is its attempt's (attemptId), or, unnamed
 * (workflows from before copies were per attempt), the shared one. Without `copy` (workflows from before
 * restores had their own copy) it frees the checkpoint's and the shared restore copy, as it did then.
 */
export function releaseStaging(
  ctx: NodeContext,
  input: { checkpointId: string; copy?: StagedCopy; attemptId?: string },
): { released: boolean } {
  const staged = stagedDir(ctx, input.checkpointId);
  const restore = restoreCopyDir(ctx, input.checkpointId, input.attemptId);
  if (!staged || !restore) return { released: false };
  // `${staged}.fetch`: where restores downloaded before they had their own copy.
  const checkpoints = [staged, `${staged}.fetch`];
  const restores = [restore, `${restore}.fetch`];
  const mine =
    input.copy === 'restore' ? restores : input.copy === 'checkpoint' ? checkpoints : [...checkpoints, ...restores];
  const had = mine.some((d) => fs.existsSync(d));
  for (const d of mine) fs.rmSync(d, { recursive: true, force: true });
  return { released: had };
}
