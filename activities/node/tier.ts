import * as fs from 'node:fs';
import * as path from 'node:path';
import { METADATA_FILE } from '../../common/metadata';
import { checkpointDir, type NodeContext } from './context';
import { releaseStaging } from './staging';
import { readMetadata } from './seal';

export interface LocalCheckpoint {
  checkpointId: string;
  jobId: string;
  bytes: number;
  createdAt: string;
}

/**
 * The node's NVMe tier: checkpoint directories holding a committed metadata.json. A directory without one
 * is a partial dump and never listed.
 */
export function listLocalCheckpoints(ctx: NodeContext): LocalCheckpoint[] {
  const root = path.join(ctx.dataDir, 'checkpoints');
  if (!fs.existsSync(root)) return [];
  const out: LocalCheckpoint[] = [];
  for (const id of fs.readdirSync(root)) {
    if (!fs.existsSync(path.join(root, id, METADATA_FILE))) continue;
    try {
      const md = readMetadata(path.join(root, id));
      out.push({
        checkpointId: id,
        jobId: md.jobId,
        bytes: md.files.reduce((s, f) => s + f.size, 0),
        createdAt: md.createdAt,
      });
    } catch {
      /* unreadable metadata: not a usable checkpoint */
    }
  }
  return out;
}

/**
 * Deletes what a failed attempt left on this node, metadata.json included: an attempt that ended Failed must
 * leave no checkpoint that looks valid.
 */
export function deleteCheckpointDir(ctx: NodeContext, input: { checkpointId: string }): { deleted: boolean } {
  const dir = checkpointDir(ctx, input.checkpointId);
  const onDisk = [dir, `${dir}.fetch`, `${dir}.persist`].filter((d) => fs.existsSync(d));
  for (const d of onDisk) fs.rmSync(d, { recursive: true, force: true });
  // The checkpoint's copies only: a restore reading its own copy of it keeps that until it releases it.
  const inMemory = releaseStaging(ctx, { checkpointId: input.checkpointId, copy: 'checkpoint' }).released;
  return { deleted: onDisk.length > 0 || inMemory };
}
