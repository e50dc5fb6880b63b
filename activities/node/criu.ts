import * as fs from 'node:fs';
import * as path from 'node:path';
import { ApplicationFailure } from '@temporalio/activity';
import { ErrorType } from '../../common/errors';
import type { DumpResult } from '../../common/checkpoint';
import { type DumpStats, readDumpStats } from './criu-stats';
import { METADATA_FILE } from '../../common/metadata';
import { checkpointDir, type NodeContext, stagedDir } from './context';
import { stagingFits } from './staging';
import { processAlive, requireProcess, treeRssBytes, writableFiles } from './process';
import { errorLines, lastLines, runTool } from './run-tool';
import { registerWorkloadProcess } from './process-registry';

export const IMAGES = 'images';
export const WORKLOAD_FILES = 'workload-files';

/**
 * Network sockets. Listening and UDP sockets need no flag. Established TCP connections are dumped with their
 * state (--tcp-established) and, while the process is frozen and after it is gone, locked: the peer's packets
 * are dropped, not answered with a reset, so the peer retransmits and the connection carries on once it is
 * restored. Our workloads share the host's network namespace, so CRIU locks per connection; its default
 * method runs the iptables binaries, which nodes need not have, while nftables goes through libnftables, a
 * library CRIU already links (the restore reads the method from the images). Connections still in a listen
 * queue (not yet accepted) are dropped rather than failing the dump: their clients lose them and reconnect.
 * Unix sockets connected outside the process tree are not dumped (no --ext-unix-sk): their peer cannot be
 * brought back, so the dump fails cleanly and the workload resumes.
 */
export const CRIU_DUMP_SOCKET_FLAGS = ['--tcp-established', '--network-lock', 'nftables', '--skip-in-flight'];
/** Established connections come back established where their local address exists (the same host) ... */
export const CRIU_RESTORE_SOCKET_FLAGS = ['--tcp-established'];
/** ... and elsewhere closed, so the workload sees a dropped connection instead of failing to restore. */
export const CRIU_RESTORE_SOCKET_FALLBACK_FLAGS = ['--tcp-close'];
/** soccr's words when an established connection's local address does not exist on this node. */
const LOCAL_ADDRESS_GONE = /Can't bind inet socket back: Cannot assign requested address/;

export async function criuVersion(ctx: NodeContext): Promise<string> {
  const r = await runTool(ctx.criuBin, ['--version']);
  return /Version:\s*(\S+)/.exec(r.stdout)?.[1] ?? r.stdout.trim();
}

function dirBytes(dir: string): number {
  let total = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    total += e.isDirectory() ? dirBytes(p) : fs.statSync(p).size;
  }
  return total;
}

/**
 * Checkpoint ids are never reused: a committed checkpoint (metadata.json on disk or in memory) under this id
 * is refused, never overwritten. A directory without metadata.json is a partial dump and may be cleared.
 */
export function refuseExistingCheckpoint(ctx: NodeContext, checkpointId: string): void {
  for (const d of [checkpointDir(ctx, checkpointId), stagedDir(ctx, checkpointId)]) {
    if (d && fs.existsSync(path.join(d, METADATA_FILE))) {
      throw ApplicationFailure.nonRetryable(
        `checkpoint '${checkpointId}' exists on ${ctx.node} (${d}); checkpoint ids are never reused`,
        ErrorType.CheckpointExists,
      );
    }
  }
}

/** CRIU's log says why a dump failed; ENOSPC deserves its own type since an operator fixes it differently. */
function classify(log: string): string {
  return /No space left on device|ENOSPC|\(28\)/.test(log) ? ErrorType.NoSpace : ErrorType.CriuDumpFailed;
}

/**
 * criu dump of the process tree rooted at pid into <checkpoint>/images: staged in memory when the node has
 * the memory for it (so the copy to disk can run beside the upload), else on disk. On a clean failure CRIU
 * resumes the tree itself; the workflow then restores CUDA. Not retried by the workflow: a second dump of a
 * process in an unknown state proves nothing. The one exception is here: a staged dump that ran out of
 * memory, after which CRIU resumed the process, is taken again on disk.
 */
export async function criuDump(
  ctx: NodeContext,
  input: { checkpointId: string; pid: number; leaveRunning: boolean; hostVramBytes?: number },
): Promise<DumpResult> {
  requireProcess(input.pid);
  refuseExistingCheckpoint(ctx, input.checkpointId);
  const disk = checkpointDir(ctx, input.checkpointId);
  const staged = stagedDir(ctx, input.checkpointId);
  // Whatever an earlier attempt left, in either place, is stale: a partial dump (no metadata.json), never a checkpoint.
  for (const d of [disk, staged]) if (d) fs.rmSync(d, { recursive: true, force: true });
  // After a CUDA checkpoint the VRAM's contents sit in the process's host memory; count them in case RSS does not.
  const estimate = treeRssBytes(input.pid) + (input.hostVramBytes ?? 0);
  const fit = stagingFits(ctx, estimate);
  const started = Date.now();
  if (staged && fit.fits) {
    try {
      const stats = await dumpInto(ctx, staged, input);
      return {
        imageBytes: dirBytes(path.join(staged, IMAGES)),
        durationMs: Date.now() - started,
        processStopped: !input.leaveRunning,
        staged: true,
        ...frozen(stats),
      };
    } catch (e) {
      const alive = processAlive(input.pid);
      if (!(e instanceof ApplicationFailure && e.type === ErrorType.NoSpace && alive)) throw e;
      fs.rmSync(staged, { recursive: true, force: true });
      ctx.logger.warn(
        { node: ctx.node, checkpoint: input.checkpointId, pid: input.pid, estimate },
        'staging memory ran out during the dump; dumping to disk',
      );
    }
  } else {
    ctx.logger.info(
      { node: ctx.node, checkpoint: input.checkpointId, pid: input.pid, estimate, why: fit.why },
      'dumping to disk, not staging in memory',
    );
  }
  const stats = await dumpInto(ctx, disk, input);
  return {
    imageBytes: dirBytes(path.join(disk, IMAGES)),
    durationMs: Date.now() - started,
    processStopped: !input.leaveRunning,
    staged: false,
    ...frozen(stats),
  };
}

/** CRIU's own measure of how long the process stood still, when it recorded one. */
const frozen = (stats: DumpStats | null): { frozenMs?: number } => (stats ? { frozenMs: stats.frozenMs } : {});

async function dumpInto(
  ctx: NodeContext,
  dir: string,
  input: { pid: number; leaveRunning: boolean },
): Promise<DumpStats | null> {
  const images = path.join(dir, IMAGES);
  fs.mkdirSync(images, { recursive: true });
  // Output files must exist with the same size at restore: copy them beside the images after the dump, so
  // the copy matches what CRIU recorded.
  const files = writableFiles(input.pid);
  const log = path.join(dir, 'criu-dump.log');
  const args = [
    'dump',
    '-t',
    String(input.pid),
    '-D',
    images,
    '-o',
    log,
    '-v4',
    '--file-locks',
    ...CRIU_DUMP_SOCKET_FLAGS,
  ];
  if (input.leaveRunning) args.push('--leave-running');
  if (ctx.criuActionScript) args.push('--action-script', ctx.criuActionScript);
  const r = await runTool(ctx.criuBin, args);
  if (r.code !== 0) {
    const errors = errorLines(log);
    const alive = processAlive(input.pid);
    throw ApplicationFailure.create({
      message: `criu dump of pid ${input.pid} into ${dir} failed (exit ${r.code ?? r.signal}); process ${alive ? 'still running' : 'gone'}:\n${[...new Set(errors)].slice(0, 5).join('\n') || lastLines(log, 12)}`,
      type: classify(errors.join('\n') + r.stderr),
      nonRetryable: true,
      details: [{ processAlive: alive }],
    });
  }
  copyWorkloadFiles(dir, files);
  return readDumpStats(images);
}

/**
 * Completes a dump whose agent was lost after CRIU wrote its images and stopped the process, but before the
 * output files were copied beside them: the process is gone, so those files are as CRIU recorded them. dir
 * holds the images (inventory.img, written last, present); files is the list the dump recorded when it started.
 */
export function finishCutDump(dir: string, files: string[], staged: boolean): DumpResult {
  if (!fs.existsSync(path.join(dir, IMAGES, 'inventory.img'))) {
    throw ApplicationFailure.nonRetryable(
      `no complete CRIU images in ${dir} (inventory.img missing)`,
      ErrorType.CriuDumpFailed,
    );
  }
  fs.rmSync(path.join(dir, WORKLOAD_FILES), { recursive: true, force: true });
  copyWorkloadFiles(dir, files);
  return { imageBytes: dirBytes(path.join(dir, IMAGES)), durationMs: 0, processStopped: true, staged };
}

function copyWorkloadFiles(dir: string, files: string[]): void {
  const out = path.join(dir, WORKLOAD_FILES);
  fs.mkdirSync(out, { recursive: true });
  const index = files.map((f, i) => {
    const artifact = `${WORKLOAD_FILES}/${i}-${path.basename(f)}`;
    fs.copyFileSync(f, path.join(dir, artifact));
    return { path: f, artifact };
  });
  fs.writeFileSync(path.join(out, 'index.json'), JSON.stringify(index));
}

export function workloadFileIndex(dir: string): { path: string; artifact: string }[] {
  const p = path.join(dir, WORKLOAD_FILES, 'index.json');
  return fs.existsSync(p) ? (JSON.parse(fs.readFileSync(p, 'utf8')) as { path: string; artifact: string }[]) : [];
}

/**
 * criu restore from a verified checkpoint directory, detached. Output files the process had open are put
 * back first at the size CRIU recorded. Returns the restored root pid.
 */
export async function criuRestore(
  ctx: NodeContext,
  input: { dir: string; files: { path: string; artifact: string }[] },
): Promise<{ pid: number }> {
  for (const f of input.files) {
    fs.mkdirSync(path.dirname(f.path), { recursive: true });
    fs.copyFileSync(path.join(input.dir, f.artifact), f.path);
  }
  const pidFile = path.join(input.dir, 'restored.pid');
  fs.rmSync(pidFile, { force: true });
  const restore = (log: string, sockets: string[]) => {
    // Cgroups are the agent's business, not the image's: CRIU would put the tree back into the cgroups it was
    // dumped from (the dumping node's job cgroup, by name), so a copy restored beside its still-running original
    // would share, and be killed with, the original's cgroup. The job workflow moves a resumed tree into its own
    // cgroup afterwards (attachRunLimits).
    const args = [
      'restore',
      '-D',
      path.join(input.dir, IMAGES),
      '-o',
      log,
      '-v4',
      '-d',
      '--file-locks',
      '--manage-cgroups=ignore',
      '--pidfile',
      pidFile,
      ...sockets,
    ];
    if (ctx.criuActionScript) args.push('--action-script', ctx.criuActionScript);
    return runTool(ctx.criuBin, args);
  };
  let log = path.join(input.dir, 'criu-restore.log');
  let r = await restore(log, CRIU_RESTORE_SOCKET_FLAGS);
  if (r.code === null) {
    // Killed by a signal (the agent shutting down cancels the activity, and runTool kills CRIU): says nothing
    // about the checkpoint, and tasks resumed just before may run on. The workflow asks the node what remains.
    throw ApplicationFailure.nonRetryable(
      `criu restore killed by ${r.signal} (agent shut down or activity cancelled)`,
      ErrorType.CriuInterrupted,
    );
  }
  // A failed restore leaves nothing behind (CRIU kills what it had restored), so trying again is safe.
  if (r.code !== 0 && LOCAL_ADDRESS_GONE.test(errorLines(log).join('\n'))) {
    ctx.logger.warn(
      { node: ctx.node, dir: input.dir, log },
      "an established TCP connection's local address is not on this node: restoring its connections closed",
    );
    log = path.join(input.dir, 'criu-restore-tcp-close.log');
    r = await restore(log, CRIU_RESTORE_SOCKET_FALLBACK_FLAGS);
  }
  if (r.code !== 0) {
    const tail = errorLines(log).slice(0, 8).join('\n') || lastLines(log, 12);
    // A pid already taken on this host can succeed elsewhere; anything else (kernel or image mismatch) will fail again.
    const pidClash = /File exists|pid.*busy|Can't fork for \d+|EEXIST/i.test(tail);
    throw ApplicationFailure.create({
      message: `criu restore failed (exit ${r.code ?? r.signal}):\n${tail}`,
      type: pidClash ? ErrorType.CriuPidConflict : ErrorType.CriuRestoreFailed,
      nonRetryable: true,
    });
  }
  const pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
  registerWorkloadProcess(ctx, pid, 'restored', input.dir);
  return { pid };
}
