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
  s3: S3Config;
  logger: Logger;
}

export const checkpointDir = (ctx: NodeContext, checkpointId: string): string => path.join(ctx.dataDir, 'checkpoints', checkpointId);
export const workloadDir = (ctx: NodeContext, jobId: string): string => path.join(ctx.dataDir, 'workloads', jobId);
export const s3Prefix = (checkpointId: string): string => `checkpoints/${checkpointId}/`;
