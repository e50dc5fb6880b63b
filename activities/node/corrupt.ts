import * as fs from 'node:fs';
import * as path from 'node:path';
import { checkpointDir, type NodeContext, stagedDir } from './context';

/**
 * Moves a checkpoint whose bytes no longer match their seal out of the node's checkpoints (to
 * <dataDir>/corrupt/<id>-<time>, with a CORRUPT note saying why): no restore or upload ever takes it again,
 * yet an operator still has the images when they were a lost workload's only trace. A copy staged in memory
 * is written there too when there is no disk copy, then the memory is freed. Idempotent: once moved, nothing
 * is left to move.
 */
export function setAsideCorrupt(
  ctx: NodeContext,
  input: { checkpointId: string; reason: string },
): { movedTo: string | null } {
  const disk = checkpointDir(ctx, input.checkpointId);
  const staged = stagedDir(ctx, input.checkpointId);
  const dest = path.join(ctx.dataDir, 'corrupt', `${input.checkpointId}-${Date.now().toString(36)}`);
  let movedTo: string | null = null;
  if (fs.existsSync(disk)) {
    fs.mkdirSync(path.dirname(dest), { recursive: true });
    fs.renameSync(disk, dest);
    movedTo = dest;
  }
  if (staged && fs.existsSync(staged)) {
    if (!movedTo) {
      fs.cpSync(staged, dest, { recursive: true });
      movedTo = dest;
    }
    fs.rmSync(staged, { recursive: true, force: true });
  }
  for (const partial of [`${disk}.fetch`, `${disk}.persist`]) fs.rmSync(partial, { recursive: true, force: true });
  if (movedTo) fs.writeFileSync(path.join(movedTo, 'CORRUPT'), `${input.reason}\n`);
  ctx.logger.warn(
    { node: ctx.node, checkpoint: input.checkpointId, movedTo, reason: input.reason },
    'corrupt checkpoint set aside',
  );
  return { movedTo };
}
