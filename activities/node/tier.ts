import * as fs from 'node:fs';
import * as path from 'node:path';
import { METADATA_FILE } from '../../common/metadata';
import { checkpointDir, type NodeContext } from './context';
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
      out.push({ checkpointId: id, jobId: md.jobId, bytes: md.files.reduce((s, f) => s + f.size, 0), createdAt: md.createdAt });
    } catch {
      /* unreadable metadata: not a usable checkpoint */
    }
  }
  return out;
}

/** Deletes a partial checkpoint (no metadata.json). A committed one is kept unless force is set. */
export function deleteCheckpointDir(ctx: NodeContext, input: { checkpointId: string; onlyIfPartial: boolean }): { deleted: boolean } {
  const dir = checkpointDir(ctx, input.checkpointId);
  if (!fs.existsSync(dir)) return { deleted: false };
  if (input.onlyIfPartial && fs.existsSync(path.join(dir, METADATA_FILE))) {
    // A metadata.json from this attempt is not trustworthy if the attempt failed before upload finished
    // sealing; the workflow passes onlyIfPartial=false in that case.
    return { deleted: false };
  }
  fs.rmSync(dir, { recursive: true, force: true });
  fs.rmSync(`${dir}.fetch`, { recursive: true, force: true });
  return { deleted: true };
}
