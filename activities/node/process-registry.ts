import * as fs from 'node:fs';
import * as path from 'node:path';
import type { NodeContext } from './context';

/**
 * Every process this node started or restored as a workload, by identity, so that whoever owns the node
 * (the local stack's `down`, an operator) can find it again however it changed since: a workload may exec
 * another program, rewrite its title and environment (redis-server does), or come back from CRIU under a
 * new pid in a new PID namespace. One file per process, named <pid>.<startTime> (start time from
 * /proc/<pid>/stat): the name alone is the identity, so a shell can read it too (deploy/local/watchdog.sh).
 */
export interface RegisteredProcess {
  pid: number;
  startTime: number;
  /** /proc/<pid>/ns/pid when recorded, e.g. 'pid:[4026532123]'. */
  pidNamespace: string | null;
  how: 'started' | 'restored';
  /** The job (started) or the checkpoint directory (restored) it belongs to. */
  label: string;
  node: string;
  recordedAt: string;
}

export const processRegistryDir = (dataDir: string): string => path.join(dataDir, 'processes');

function startTimeOf(pid: number): number | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
  } catch {
    return null;
  }
}

/**
 * Records a workload process (best effort: a registry that cannot be written must not fail a start or a
 * restore that worked; it is logged). Entries of processes that are gone are pruned on the way.
 */
export function registerWorkloadProcess(
  ctx: NodeContext,
  pid: number,
  how: RegisteredProcess['how'],
  label: string,
): void {
  const dir = processRegistryDir(ctx.dataDir);
  try {
    const startTime = startTimeOf(pid);
    if (startTime === null) return; // already gone: nothing to find later
    let pidNamespace: string | null = null;
    try {
      pidNamespace = fs.readlinkSync(`/proc/${pid}/ns/pid`);
    } catch {
      /* not ours to read */
    }
    fs.mkdirSync(dir, { recursive: true });
    const entry: RegisteredProcess = {
      pid,
      startTime,
      pidNamespace,
      how,
      label,
      node: ctx.node,
      recordedAt: new Date().toISOString(),
    };
    const file = path.join(dir, `${pid}.${startTime}`);
    fs.writeFileSync(`${file}.tmp`, JSON.stringify(entry));
    fs.renameSync(`${file}.tmp`, file);
    for (const e of listRegisteredProcesses(ctx.dataDir))
      if (startTimeOf(e.pid) !== e.startTime) fs.rmSync(path.join(dir, `${e.pid}.${e.startTime}`), { force: true });
  } catch (e) {
    ctx.logger.warn(
      { node: ctx.node, pid, how, label, err: (e as Error).message },
      'workload process not recorded in the registry',
    );
  }
}

/** The recorded entries, whether or not their processes still run. */
export function listRegisteredProcesses(dataDir: string): RegisteredProcess[] {
  const dir = processRegistryDir(dataDir);
  if (!fs.existsSync(dir)) return [];
  const out: RegisteredProcess[] = [];
  for (const name of fs.readdirSync(dir)) {
    const m = /^(\d+)\.(\d+)$/.exec(name);
    if (!m) continue;
    try {
      out.push(JSON.parse(fs.readFileSync(path.join(dir, name), 'utf8')) as RegisteredProcess);
    } catch {
      // Written by rename, so never half; unreadable means removed meanwhile. The name still identifies it.
      out.push({
        pid: Number(m[1]),
        startTime: Number(m[2]),
        pidNamespace: null,
        how: 'started',
        label: '?',
        node: '?',
        recordedAt: '',
      });
    }
  }
  return out;
}
