import * as fs from 'node:fs';
import * as path from 'node:path';
import { ApplicationFailure } from '@temporalio/activity';
import { ErrorType } from '../../common/errors';
import type { JobLimits } from '../../common/job';
import { type NodeContext, safeId } from './context';
import { heartbeat } from './run-tool';

/**
 * A job's cgroups: `kybernate/<node>/<jobId>` under each controller (v1: one hierarchy per controller; v2: one
 * tree). The node name is in the path because the local stack runs several agents on one host. The run shim
 * joins them before it forks the workload, so every descendant is limited and can be found again by them,
 * even one that left the process group or the session.
 */
export type CgroupVersion = 'v1' | 'v2' | 'none';

/** Overridable only so that a test host without cgroups can be told apart; production uses the mount point. */
export const CGROUP_ROOT = process.env.KYBERNATE_CGROUP_ROOT ?? '/sys/fs/cgroup';

/** v1 hierarchies a job joins: its limits (memory, pids, cpu) and freezer, which only tracks its tasks. */
const V1_CONTROLLERS = ['memory', 'pids', 'cpu', 'freezer'] as const;
type V1Controller = (typeof V1_CONTROLLERS)[number];

export function cgroupVersion(root = CGROUP_ROOT): CgroupVersion {
  if (fs.existsSync(path.join(root, 'cgroup.controllers'))) return 'v2';
  if (V1_CONTROLLERS.some((c) => fs.existsSync(path.join(root, c, 'cgroup.procs')))) return 'v1';
  return 'none';
}

/** The job's cgroup directory in each hierarchy (which may not exist yet), by controller ('unified' on v2). */
export function jobCgroupDirs(ctx: NodeContext, jobId: string, root = CGROUP_ROOT): Map<string, string> {
  const id = safeId('jobId', jobId);
  const out = new Map<string, string>();
  const version = cgroupVersion(root);
  if (version === 'v2') out.set('unified', path.join(root, 'kybernate', ctx.node, id));
  if (version === 'v1') {
    const seen = new Set<string>();
    for (const c of V1_CONTROLLERS) {
      const mount = path.join(root, c);
      if (!fs.existsSync(path.join(mount, 'cgroup.procs'))) continue;
      // cpu may be co-mounted with cpuacct (cpu -> cpu,cpuacct): one hierarchy, joined once.
      const real = fs.realpathSync(mount);
      if (seen.has(real)) continue;
      seen.add(real);
      out.set(c, path.join(mount, 'kybernate', ctx.node, id));
    }
  }
  return out;
}

const hasLimits = (l: JobLimits | undefined): boolean =>
  l !== undefined && (l.cpu !== undefined || l.memoryBytes !== undefined || l.pids !== undefined);

function writeKnob(dir: string, file: string, value: string): void {
  fs.writeFileSync(path.join(dir, file), value);
}

function readProcs(dir: string): number[] {
  try {
    return fs.readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** The limits of one hierarchy. v1 memory: memsw is lifted first, since it may never be below the limit. */
function writeLimits(controller: string, dir: string, limits: JobLimits): void {
  const mem = limits.memoryBytes !== undefined ? String(Math.floor(limits.memoryBytes)) : '-1';
  const quota = limits.cpu !== undefined ? String(Math.max(1000, Math.round(limits.cpu * 100000))) : '-1';
  const pids = limits.pids !== undefined ? String(Math.floor(limits.pids)) : 'max';
  const v1 = controller as V1Controller | 'unified';
  if (v1 === 'memory') {
    const memsw = fs.existsSync(path.join(dir, 'memory.memsw.limit_in_bytes'));
    if (memsw) writeKnob(dir, 'memory.memsw.limit_in_bytes', '-1');
    writeKnob(dir, 'memory.limit_in_bytes', mem);
    // The same value with swap, so that swapping does not dodge the limit.
    if (memsw) writeKnob(dir, 'memory.memsw.limit_in_bytes', mem);
  } else if (v1 === 'pids') {
    writeKnob(dir, 'pids.max', pids);
  } else if (v1 === 'cpu') {
    writeKnob(dir, 'cpu.cfs_period_us', '100000');
    writeKnob(dir, 'cpu.cfs_quota_us', quota);
  } else if (v1 === 'unified') {
    const controllers = fs.readFileSync(path.join(dir, 'cgroup.controllers'), 'utf8').split(/\s+/);
    if (controllers.includes('memory')) {
      writeKnob(dir, 'memory.max', limits.memoryBytes !== undefined ? mem : 'max');
      if (fs.existsSync(path.join(dir, 'memory.swap.max')))
        writeKnob(dir, 'memory.swap.max', limits.memoryBytes !== undefined ? '0' : 'max');
    } else if (limits.memoryBytes !== undefined) throw new Error('the memory controller is not enabled');
    if (controllers.includes('pids')) writeKnob(dir, 'pids.max', pids);
    else if (limits.pids !== undefined) throw new Error('the pids controller is not enabled');
    if (controllers.includes('cpu')) writeKnob(dir, 'cpu.max', `${limits.cpu !== undefined ? quota : 'max'} 100000`);
    else if (limits.cpu !== undefined) throw new Error('the cpu controller is not enabled');
  }
}

/** v2: the controllers must be enabled in every ancestor's subtree_control for the job's cgroup to have them. */
function enableV2Controllers(root: string, node: string): void {
  let dir = root;
  for (const part of ['kybernate', node]) {
    const available = fs.readFileSync(path.join(dir, 'cgroup.controllers'), 'utf8').split(/\s+/);
    const want = ['memory', 'pids', 'cpu']
      .filter((c) => available.includes(c))
      .map((c) => `+${c}`)
      .join(' ');
    if (want) fs.writeFileSync(path.join(dir, 'cgroup.subtree_control'), want);
    dir = path.join(dir, part);
    fs.mkdirSync(dir, { recursive: true });
  }
}

/**
 * Creates the job's cgroups with its limits and returns the directories to hand to the shim. Idempotent. An
 * empty cgroup left by an earlier run is made afresh, so its counters (v1 oom_kill cannot be reset) start at
 * zero; one with tasks in it is kept and its limits written again. A node that cannot write cgroups runs the
 * job without them when it asks for no limits (logged), and refuses it with LimitsUnavailable otherwise.
 */
export function createJobCgroup(
  ctx: NodeContext,
  jobId: string,
  limits: JobLimits,
  root = CGROUP_ROOT,
): { dirs: string[]; version: CgroupVersion } {
  const version = cgroupVersion(root);
  const dirs = jobCgroupDirs(ctx, jobId, root);
  const unavailable = (controller: string, why: string): { dirs: string[]; version: CgroupVersion } => {
    if (hasLimits(limits)) {
      throw ApplicationFailure.nonRetryable(
        `job ${jobId} asks for limits ${JSON.stringify(limits)} but node ${ctx.node} cannot enforce them: cgroup ${controller}: ${why}`,
        ErrorType.LimitsUnavailable,
        { controller },
      );
    }
    ctx.logger.warn(
      { job: jobId, node: ctx.node, controller, why },
      'job runs without a cgroup: cgroups cannot be written on this node',
    );
    return { dirs: [], version: 'none' };
  };
  if (version === 'none' || dirs.size === 0) return unavailable(path.join(root, '*'), 'no cgroup hierarchy is mounted');
  if (version === 'v1') {
    const missing = (['memory', 'pids', 'cpu'] as const).find(
      (c) =>
        !dirs.has(c) && (c === 'memory' ? limits.memoryBytes : c === 'pids' ? limits.pids : limits.cpu) !== undefined,
    );
    if (missing) return unavailable(missing, 'this controller is not mounted');
  }
  for (const [controller, dir] of dirs) {
    try {
      if (version === 'v2') enableV2Controllers(root, ctx.node);
      if (fs.existsSync(dir) && readProcs(dir).length === 0) fs.rmdirSync(dir);
      fs.mkdirSync(dir, { recursive: true });
      writeLimits(controller, dir, limits);
      if (controller === 'memory') {
        // Tasks moved in later (a restored tree) bring their memory with them, so it counts against the limit.
        for (const counter of ['memory.max_usage_in_bytes', 'memory.failcnt', 'memory.move_charge_at_immigrate']) {
          try {
            writeKnob(dir, counter, counter === 'memory.move_charge_at_immigrate' ? '3' : '0');
          } catch {
            /* a knob this kernel does not have */
          }
        }
      }
    } catch (e) {
      return unavailable(controller, (e as Error).message);
    }
  }
  ctx.logger.info({ job: jobId, node: ctx.node, version, limits, dirs: [...dirs.values()] }, 'job cgroup ready');
  return { dirs: [...dirs.values()], version };
}

/** Moves processes (a restored tree: CRIU puts its tasks back where the dump found them) into the job's cgroups. */
export function attachToJobCgroup(ctx: NodeContext, jobId: string, pids: number[], root = CGROUP_ROOT): string[] {
  const dirs = [...jobCgroupDirs(ctx, jobId, root).values()].filter((d) => fs.existsSync(d));
  for (const dir of dirs) {
    for (const pid of pids) {
      try {
        writeKnob(dir, 'cgroup.procs', String(pid));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e; // exited meanwhile: nothing to limit
      }
    }
  }
  return dirs;
}

/**
 * The kybernate cgroups (under any node's kybernate/ tree) the processes are in now, by directory. CRIU puts a
 * restored tree back into the cgroups it was dumped from, creating them if need be, which on another node means
 * a cgroup under the first node's name.
 */
export function kybernateCgroupsOf(pids: number[], root = CGROUP_ROOT): string[] {
  const out = new Set<string>();
  for (const pid of pids) {
    let text: string;
    try {
      text = fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8');
    } catch {
      continue; // gone meanwhile
    }
    for (const line of text.split('\n')) {
      const [, controllers, where] = line.split(':');
      if (!where?.startsWith('/kybernate/')) continue;
      const mounts =
        controllers === '' ? [root] : controllers.split(',').map((c) => path.join(root, c.replace(/^name=/, '')));
      for (const m of mounts) if (fs.existsSync(path.join(m, where))) out.add(path.join(m, where));
    }
  }
  return [...out].sort();
}

/** Whether the kernel's OOM killer killed a task of the job's cgroup (since the cgroup was made). */
export function jobCgroupOomKilled(ctx: NodeContext, jobId: string, root = CGROUP_ROOT): boolean {
  const dirs = jobCgroupDirs(ctx, jobId, root);
  const file = dirs.has('unified')
    ? path.join(dirs.get('unified')!, 'memory.events')
    : dirs.has('memory')
      ? path.join(dirs.get('memory')!, 'memory.oom_control')
      : null;
  if (!file) return false;
  try {
    return Number(/^oom_kill (\d+)$/m.exec(fs.readFileSync(file, 'utf8'))?.[1] ?? 0) > 0;
  } catch {
    return false;
  }
}

/** Jobs with a cgroup of this node (in any hierarchy), for the orphan sweep. */
export function listJobCgroups(ctx: NodeContext, root = CGROUP_ROOT): string[] {
  const version = cgroupVersion(root);
  const parents =
    version === 'v2'
      ? [path.join(root, 'kybernate', ctx.node)]
      : V1_CONTROLLERS.map((c) => path.join(root, c, 'kybernate', ctx.node));
  const out = new Set<string>();
  for (const p of parents) {
    try {
      for (const e of fs.readdirSync(p, { withFileTypes: true })) if (e.isDirectory()) out.add(e.name);
    } catch {
      /* not there */
    }
  }
  return [...out].sort();
}

/**
 * Kills every task still in the job's cgroups (SIGKILL, read from cgroup.procs: this catches descendants that
 * escaped the process group or the session), waits for them to be empty, and removes them. Idempotent.
 */
export async function removeJobCgroup(
  ctx: NodeContext,
  jobId: string,
  root = CGROUP_ROOT,
): Promise<{ killed: number; removed: string[] }> {
  const dirs = [...jobCgroupDirs(ctx, jobId, root).values()].filter((d) => fs.existsSync(d));
  const killed = new Set<number>();
  const deadline = Date.now() + 30_000;
  for (;;) {
    const left = new Set(dirs.flatMap(readProcs));
    if (left.size === 0) break;
    if (Date.now() > deadline) {
      throw ApplicationFailure.retryable(
        `job ${jobId}: ${left.size} tasks still in its cgroup after SIGKILL (pids ${[...left].slice(0, 10).join(' ')})`,
        ErrorType.ProcessesRemain,
      );
    }
    for (const pid of left) {
      try {
        process.kill(pid, 'SIGKILL');
        killed.add(pid);
      } catch {
        /* gone meanwhile */
      }
    }
    heartbeat();
    await new Promise((r) => setTimeout(r, 50));
  }
  const removed: string[] = [];
  for (const dir of dirs) {
    // An emptied v1 cgroup may refuse rmdir for a moment (EBUSY) while the last task is released.
    for (let i = 0; ; i++) {
      try {
        fs.rmdirSync(dir);
        removed.push(dir);
        break;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') break;
        if (code !== 'EBUSY' || i >= 100) throw e;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }
  if (killed.size > 0 || removed.length > 0)
    ctx.logger.info({ job: jobId, node: ctx.node, killed: killed.size, removed }, 'job cgroup removed');
  return { killed: killed.size, removed };
}
