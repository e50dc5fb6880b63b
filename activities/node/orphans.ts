import * as fs from 'node:fs';
import * as path from 'node:path';
import { type Client, WorkflowNotFoundError } from '@temporalio/client';
import { isSafeId } from '../../common/ids';
import { jobWorkflowId } from '../../common/job';
import { METADATA_FILE } from '../../common/metadata';
import { checkpointWorkflowId } from '../../common/queues';
import { listJobCgroups, removeJobCgroup } from './cgroups';
import { checkpointDir, diskFetchOwner, type NodeContext, restoreCopyOwner } from './context';
import { readPidFile } from './pid-file';
import { sameMetadata } from './seal';
import { isSameProcess, killProcess } from './process';

/**
 * At agent start: what a crash or an outage left on this node that no open workflow owns — a job's cgroup and
 * its processes (owner job/<jobId>), a staged or on-disk checkpoint directory without metadata.json (owner
 * checkpoint/<id>), and memory held by copies in the staging directory that are no checkpoint's only copy: a
 * restore attempt's own copy, complete or not (owner restore/<id>/<n>, named by its attempt), and a checkpoint's
 * complete staged copy whose disk copy holds the same metadata.json (owner checkpoint/<id>), and a restore
 * attempt's download beside the disk copy (<id>.<attemptId>.fetch, owner restore/<id>/<n>) — is removed, and
 * each removal logged. Only when Temporal says the owner is closed or was never there: a sweep that cannot get
 * an answer for every owner removes nothing (a timeout is "unknown").
 * Never touched: a complete checkpoint on disk, a complete staged copy without the same disk copy (it may be
 * the only one), a workload of the old runWorkload (it has no job workflow: only processes named by a run
 * under workloads/<job>/runs/ are a job's), and copies whose owner cannot be named (the shared <id>.restore and
 * the disk copy's <id>.fetch of older restores, attempts named by run id).
 */
export type OwnerState = 'open' | 'closed' | 'not-found';
/** Throws when it cannot tell (Temporal unreachable, an unknown status). */
export type OwnerLookup = (workflowId: string) => Promise<OwnerState>;

export interface SweepReport {
  /** Set when nothing was removed because an owner's state could not be learned. */
  skipped: string | null;
  removed: Array<{
    kind: 'job' | 'checkpoint' | 'staging' | 'restore-copy' | 'staged-copy' | 'restore-fetch';
    id: string;
    detail: string;
  }>;
}

export function temporalOwnerLookup(client: Client, timeoutMs = 10_000): OwnerLookup {
  return async (workflowId) => {
    // Aborted rather than left behind (the client's own retries would go on against a Temporal that is away),
    // and raced, since a connection still being made does not heed the abort.
    const abort = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        abort.abort();
        reject(new Error(`describe ${workflowId}: no answer in ${timeoutMs} ms`));
      }, timeoutMs);
    });
    try {
      const describe = client.withAbortSignal(abort.signal, () => client.workflow.getHandle(workflowId).describe());
      describe.catch(() => undefined); // when the timeout wins, the aborted call's failure is no one's to handle
      const d = await Promise.race([describe, timeout]);
      const status = d.status.name;
      if (status === 'RUNNING') return 'open';
      if (['COMPLETED', 'FAILED', 'CANCELLED', 'TERMINATED', 'TIMED_OUT', 'CONTINUED_AS_NEW'].includes(status))
        return 'closed';
      throw new Error(`describe ${workflowId}: status ${status}`);
    } catch (e) {
      if (e instanceof WorkflowNotFoundError) return 'not-found';
      throw e;
    } finally {
      clearTimeout(timer);
    }
  };
}

const listDirs = (dir: string | null): string[] => {
  if (!dir) return [];
  try {
    return fs
      .readdirSync(dir, { withFileTypes: true })
      .filter((e) => e.isDirectory())
      .map((e) => e.name)
      .sort();
  } catch {
    return [];
  }
};

/** The job's run process, if it still runs: the pid file's process, when a run of the job recorded it. */
function jobRunProcess(ctx: NodeContext, jobId: string): { pid: number; startTime: number } | null {
  const dir = path.join(ctx.dataDir, 'workloads', jobId);
  const rec = readPidFile(path.join(dir, 'pid'));
  if (!rec || rec.startTime === undefined) return null;
  const id = { pid: rec.pid, startTime: rec.startTime };
  if (!isSameProcess(id)) return null;
  for (const run of listDirs(path.join(dir, 'runs'))) {
    try {
      const r = JSON.parse(fs.readFileSync(path.join(dir, 'runs', run, 'run.json'), 'utf8')) as {
        process?: { pid?: number; startTime?: number };
      };
      if (r.process?.pid === id.pid && r.process.startTime === id.startTime) return id;
    } catch {
      /* no record of this run */
    }
  }
  return null; // a workload of the old runWorkload: not a job's, left alone
}

interface RemovableCopy {
  kind: 'restore-copy' | 'staged-copy' | 'restore-fetch';
  id: string;
  dir: string;
  owner: string;
  /** Checked again right before removal: the copy is still not the only one. */
  removable: () => boolean;
}

/** Copies in the staging directory (memory) that are not a checkpoint's only copy, with the workflow owning each. */
function memoryCopies(ctx: NodeContext): RemovableCopy[] {
  const root = ctx.stagingDir;
  if (!root) return [];
  const copies: RemovableCopy[] = [];
  for (const name of listDirs(root)) {
    const dir = path.join(root, name);
    const restore = restoreCopyOwner(name);
    if (restore) {
      // A restore reads a checkpoint that lives elsewhere (S3, the disk copy, or the staged copy it links).
      copies.push({
        kind: 'restore-copy',
        id: restore.checkpointId,
        dir,
        owner: restore.workflowId,
        removable: () => true,
      });
    } else if (isSafeId(name) && !name.endsWith('.fetch') && fs.existsSync(path.join(dir, METADATA_FILE))) {
      const disk = checkpointDir(ctx, name);
      if (sameMetadata(dir, disk))
        copies.push({
          kind: 'staged-copy',
          id: name,
          dir,
          owner: checkpointWorkflowId(name),
          removable: () => sameMetadata(dir, disk),
        });
    }
  }
  return copies;
}

/**
 * Downloads beside a disk copy (`<id>.<attemptId>.fetch`) by restore attempts that can be named: one cut short by
 * a crash stays on disk, maybe gigabytes, until removed; a retry of the same attempt starts it over anyway.
 */
function diskFetches(ctx: NodeContext): RemovableCopy[] {
  const root = path.join(ctx.dataDir, 'checkpoints');
  return listDirs(root).flatMap((name) => {
    const owner = diskFetchOwner(name);
    return owner
      ? [
          {
            kind: 'restore-fetch' as const,
            id: owner.checkpointId,
            dir: path.join(root, name),
            owner: owner.workflowId,
            removable: () => true,
          },
        ]
      : [];
  });
}

const COPY_KINDS: Record<RemovableCopy['kind'], string> = {
  'restore-copy': "a restore attempt's copy in memory",
  'staged-copy': 'a staged copy whose disk copy is the same',
  'restore-fetch': "a restore attempt's download left beside the disk copy",
};

export async function sweepOrphans(ctx: NodeContext, owner: OwnerLookup): Promise<SweepReport> {
  const jobs = new Set(listJobCgroups(ctx).filter(isSafeId));
  for (const j of listDirs(path.join(ctx.dataDir, 'workloads'))) if (isSafeId(j) && jobRunProcess(ctx, j)) jobs.add(j);
  const partial = (root: string | null): Array<{ id: string; dir: string }> =>
    listDirs(root)
      .filter((n) => isSafeId(n) && !n.endsWith('.fetch') && !fs.existsSync(path.join(root!, n, METADATA_FILE)))
      .map((id) => ({ id, dir: path.join(root!, id) }));
  const checkpoints = partial(path.join(ctx.dataDir, 'checkpoints'));
  const staged = partial(ctx.stagingDir);
  const copies = [...memoryCopies(ctx), ...diskFetches(ctx)];

  // Every owner asked first: one that cannot be answered stops the whole sweep before anything is removed.
  const states = new Map<string, OwnerState>();
  const wanted = [
    ...[...jobs].map(jobWorkflowId),
    ...[...checkpoints, ...staged].map((c) => checkpointWorkflowId(c.id)),
    ...copies.map((c) => c.owner),
  ];
  try {
    for (const id of wanted) if (!states.has(id)) states.set(id, await owner(id));
  } catch (e) {
    const why = `Temporal could not say whether the owners are open: ${(e as Error).message}`;
    ctx.logger.warn({ node: ctx.node, candidates: wanted.length }, `orphan sweep removed nothing: ${why}`);
    return { skipped: why, removed: [] };
  }
  const orphaned = (workflowId: string): boolean =>
    states.get(workflowId) === 'closed' || states.get(workflowId) === 'not-found';
  const report: SweepReport = { skipped: null, removed: [] };

  for (const jobId of jobs) {
    if (!orphaned(jobWorkflowId(jobId))) continue;
    try {
      const proc = jobRunProcess(ctx, jobId);
      if (proc)
        await killProcess(
          ctx,
          proc.pid,
          `orphan: workflow ${jobWorkflowId(jobId)} is ${states.get(jobWorkflowId(jobId))}`,
          proc.startTime,
        );
      const { killed, removed } = await removeJobCgroup(ctx, jobId);
      const detail = `${proc ? `run process ${proc.pid} killed; ` : ''}${killed} tasks killed in its cgroup; ${removed.length} cgroup dirs removed`;
      ctx.logger.warn(
        { job: jobId, node: ctx.node, owner: states.get(jobWorkflowId(jobId)), detail },
        'orphan removed: job processes and cgroup',
      );
      report.removed.push({ kind: 'job', id: jobId, detail });
    } catch (e) {
      ctx.logger.error({ job: jobId, node: ctx.node, err: (e as Error).message }, 'orphan job could not be removed');
    }
  }
  for (const [kind, list] of [
    ['checkpoint', checkpoints],
    ['staging', staged],
  ] as const) {
    for (const c of list) {
      if (!orphaned(checkpointWorkflowId(c.id))) continue;
      // Checked again right before: a complete checkpoint is never removed, whatever its workflow says.
      if (fs.existsSync(path.join(c.dir, METADATA_FILE))) continue;
      fs.rmSync(c.dir, { recursive: true, force: true });
      ctx.logger.warn(
        { checkpoint: c.id, node: ctx.node, owner: states.get(checkpointWorkflowId(c.id)), dir: c.dir },
        `orphan removed: partial ${kind} directory`,
      );
      report.removed.push({ kind, id: c.id, detail: c.dir });
    }
  }
  for (const c of copies) {
    if (!orphaned(c.owner) || !c.removable()) continue;
    fs.rmSync(c.dir, { recursive: true, force: true });
    ctx.logger.warn(
      { checkpoint: c.id, node: ctx.node, owner: c.owner, ownerState: states.get(c.owner), dir: c.dir },
      `orphan removed: ${COPY_KINDS[c.kind]}`,
    );
    report.removed.push({ kind: c.kind, id: c.id, detail: c.dir });
  }
  ctx.logger.info({ node: ctx.node, removed: report.removed.length }, 'orphan sweep done');
  return report;
}
