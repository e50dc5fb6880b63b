import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import type { S3Config } from '../../common/config';

/** What every node activity knows about the node it runs on; built once by the agent. */
export interface NodeContext {
  node: string;
  zone: string | null;
  dataDir: string;
  criuBin: string;
  /** CRIU --action-script, run at each dump/restore stage (network locking, site hooks, fault tests). */
  criuActionScript: string | null;
  /** VRAM capacity given on the command line for a node without a GPU; reported as declared, never as measured. */
  declaredVramBytes: number | null;
  /**
   * A directory in memory (tmpfs) where a dump or a fetch is staged when the node has the memory for it, so
   * CRIU writes and reads at memory speed and the copy to disk runs beside the upload; null: always on disk.
   */
  stagingDir: string | null;
  s3: S3Config;
  logger: Logger;
}

export const checkpointDir = (ctx: NodeContext, checkpointId: string): string => path.join(ctx.dataDir, 'checkpoints', checkpointId);
export const workloadDir = (ctx: NodeContext, jobId: string): string => path.join(ctx.dataDir, 'workloads', jobId);
export const s3Prefix = (checkpointId: string): string => `checkpoints/${checkpointId}/`;

export const stagedDir = (ctx: NodeContext, checkpointId: string): string | null =>
  ctx.stagingDir ? path.join(ctx.stagingDir, checkpointId) : null;

/**
 * Where this node's copy of a checkpoint lives now: staged in memory while it is being dumped, sealed and
 * uploaded (or fetched and restored), else on disk.
 */
export function checkpointLocation(ctx: NodeContext, checkpointId: string): string {
  const staged = stagedDir(ctx, checkpointId);
  return staged && fs.existsSync(staged) ? staged : checkpointDir(ctx, checkpointId);
}
