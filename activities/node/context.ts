import * as fs from 'node:fs';
import * as path from 'node:path';
import { ApplicationFailure } from '@temporalio/activity';
import type { Logger } from 'pino';
import type { S3Config } from '../../common/config';
import { ErrorType } from '../../common/errors';
import { assertSafeId, InvalidInputError, isSafeId } from '../../common/ids';
import { restoreOfAttempt } from '../../common/restore';

/** What every node activity knows about the node it runs on; built once by the agent. */
export interface NodeContext {
  node: string;
  zone: string | null;
  dataDir: string;
  criuBin: string;
  /**
   * The init (tini) that runs as pid 1 of each workload's PID namespace, forwarding signals to the workload and
   * reaping zombies; null: the workload itself is pid 1 there and ignores SIGTERM unless it handles it.
   */
  initBin: string | null;
  /**
   * The shim every job run is started under (deploy/native/kybernate-shim.c): it joins the job's cgroups, writes
   * the run's log in the CRI format and records the run's exit status, so neither needs the agent to be up.
   */
  shimBin: string;
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

/**
 * An id that is about to become part of a path or an S3 key. Checked here, where it is used, and not only by
 * the CLI: a workflow input written by anyone who can reach Temporal must not name a directory outside the
 * data dir ('../..', '/etc') nor a key outside the checkpoint's prefix. Non-retryable: the same input fails again.
 */
export function safeId(field: string, value: unknown): string {
  try {
    return assertSafeId(field, value);
  } catch (e) {
    if (e instanceof InvalidInputError)
      throw ApplicationFailure.nonRetryable(e.message, ErrorType.InvalidInput, { field });
    throw e;
  }
}

export const checkpointDir = (ctx: NodeContext, checkpointId: string): string =>
  path.join(ctx.dataDir, 'checkpoints', safeId('checkpointId', checkpointId));
export const workloadDir = (ctx: NodeContext, jobId: string): string =>
  path.join(ctx.dataDir, 'workloads', safeId('jobId', jobId));
export const s3Prefix = (checkpointId: string): string => `checkpoints/${safeId('checkpointId', checkpointId)}/`;

export const stagedDir = (ctx: NodeContext, checkpointId: string): string | null => {
  const id = safeId('checkpointId', checkpointId);
  return ctx.stagingDir ? path.join(ctx.stagingDir, id) : null;
};

/**
 * Where this node's copy of a checkpoint lives now: staged in memory while it is being dumped, sealed and
 * uploaded (or fetched and restored), else on disk.
 */
export function checkpointLocation(ctx: NodeContext, checkpointId: string): string {
  const staged = stagedDir(ctx, checkpointId);
  return staged && fs.existsSync(staged) ? staged : checkpointDir(ctx, checkpointId);
}

/**
 * Where a restore attempt keeps its own copy of a checkpoint in memory: `<staging>/<id>.restore-<attemptId>`, so
 * that two restores of one checkpoint on one node (two replicas on an 8-GPU node) never share, replace or free
 * each other's files. Without an attempt (restores fetched by agents before the copy was per attempt, whose
 * workflows name none): `<staging>/<id>.restore`, shared. Null: no staging.
 */
export function restoreCopyDir(ctx: NodeContext, checkpointId: string, attemptId?: string): string | null {
  const staged = stagedDir(ctx, checkpointId);
  if (!staged) return null;
  return attemptId === undefined ? `${staged}.restore` : `${staged}${RESTORE_COPY}${safeId('attemptId', attemptId)}`;
}

const RESTORE_COPY = '.restore-';

/**
 * The restore workflow whose attempt owns a name of restoreCopyDir's in the staging directory (or its `.fetch`,
 * while linked or downloaded), when the attempt id is a readable one; null for any other name.
 */
export function restoreCopyOwner(name: string): { checkpointId: string; workflowId: string } | null {
  const base = name.endsWith('.fetch') ? name.slice(0, -'.fetch'.length) : name;
  // A checkpoint id may itself hold RESTORE_COPY: the split is the one whose attempt names that very checkpoint.
  for (let i = base.indexOf(RESTORE_COPY); i > 0; i = base.indexOf(RESTORE_COPY, i + 1)) {
    const owner = restoreOfAttempt(base.slice(i + RESTORE_COPY.length));
    if (owner && owner.checkpointId === base.slice(0, i) && isSafeId(owner.checkpointId)) return owner;
  }
  return null;
}

/**
 * The restore workflow whose attempt downloads into `<id>.<attemptId>.fetch` beside the checkpoint's disk copy
 * (fetchCheckpoint, when the checkpoint does not fit in memory), when the attempt id is a readable one; null for
 * any other name (the `<id>.fetch` of restores that named no attempt has no owner to ask).
 */
export function diskFetchOwner(name: string): { checkpointId: string; workflowId: string } | null {
  if (!name.endsWith('.fetch')) return null;
  const base = name.slice(0, -'.fetch'.length);
  // Checkpoint ids may hold dots: the split is the one whose attempt names that very checkpoint.
  for (let i = base.indexOf('.'); i > 0; i = base.indexOf('.', i + 1)) {
    const owner = restoreOfAttempt(base.slice(i + 1));
    if (owner && owner.checkpointId === base.slice(0, i) && isSafeId(owner.checkpointId)) return owner;
  }
  return null;
}

/**
 * Where a restore reads a checkpoint: the attempt's own copy in memory when its fetch made one, else the shared
 * one a fetch made before copies were per attempt, else where the checkpoint lives (its disk copy; or, for a
 * restore fetched before restores had their own copy, the staged one).
 */
export function restoreLocation(ctx: NodeContext, checkpointId: string, attemptId?: string): string {
  const own = attemptId === undefined ? [] : [restoreCopyDir(ctx, checkpointId, attemptId)];
  for (const dir of [...own, restoreCopyDir(ctx, checkpointId)]) if (dir && fs.existsSync(dir)) return dir;
  return checkpointLocation(ctx, checkpointId);
}
