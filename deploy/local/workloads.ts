import * as fs from 'node:fs';
import * as path from 'node:path';
import { processIdentity } from '../../activities/node/process';
import { listRegisteredProcesses, processRegistryDir } from '../../activities/node/process-registry';

/** Node data directories of this stack: <home>/nodes/* and any other an agent told us about (--data-dir). */
export const nodeDirsFile = (home: string): string => path.join(home, 'node-dirs');

/** Appends an agent's data directory to the stack's list (once), so that `down` finds its workloads. */
export function noteNodeDir(home: string, dataDir: string): void {
  const abs = path.resolve(dataDir);
  if (knownNodeDirs(home).includes(abs)) return;
  fs.mkdirSync(home, { recursive: true });
  // O_APPEND of one short line: agents starting at the same time do not tear each other's lines.
  fs.appendFileSync(nodeDirsFile(home), `${abs}\n`);
}

export function knownNodeDirs(home: string): string[] {
  const listed = fs.existsSync(nodeDirsFile(home))
    ? fs.readFileSync(nodeDirsFile(home), 'utf8').split('\n').filter(Boolean)
    : [];
  const nodes = path.join(home, 'nodes');
  const local = fs.existsSync(nodes) ? fs.readdirSync(nodes).map((n) => path.join(nodes, n)) : [];
  return [...new Set([...listed, ...local].map((d) => path.resolve(d)))];
}

/** Start time of a running process; null when it is gone or a zombie (dead, waiting to be reaped). */
const startTimeOf = (pid: number): number | null => processIdentity(pid)?.startTime ?? null;

const pidNamespaceOf = (pid: number | 'self'): string | null => {
  try {
    return fs.readlinkSync(`/proc/${pid}/ns/pid`);
  } catch {
    return null;
  }
};

/**
 * The running processes of every workload this stack's agents started or restored: each recorded process
 * that is still that very process (pid and start time), and everything in its PID namespace (children,
 * whatever it exec'd or forked). Never a process of our own namespace.
 */
export function findWorkloadProcesses(home: string): { pid: number; label: string }[] {
  const own = pidNamespaceOf('self');
  const roots: { pid: number; label: string; ns: string | null }[] = [];
  for (const dir of knownNodeDirs(home)) {
    for (const e of listRegisteredProcesses(dir)) {
      if (startTimeOf(e.pid) !== e.startTime) continue;
      roots.push({ pid: e.pid, label: `${e.how} ${e.label} on ${e.node}`, ns: pidNamespaceOf(e.pid) });
    }
  }
  const byNs = new Map(roots.filter((r) => r.ns && r.ns !== own).map((r) => [r.ns as string, r.label]));
  const found = new Map(roots.map((r) => [r.pid, r.label]));
  if (byNs.size) {
    for (const name of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(name)) continue;
      const label = byNs.get(pidNamespaceOf(Number(name)) ?? '');
      if (label && !found.has(Number(name)) && startTimeOf(Number(name)) !== null) found.set(Number(name), label);
    }
  }
  return [...found].map(([pid, label]) => ({ pid, label }));
}

/**
 * SIGKILLs every workload process of the stack (see findWorkloadProcesses), waits until none is left, and
 * forgets the registry entries. Workloads outlive agents by design (they are detached); the stack that
 * started them takes them along.
 */
export async function killWorkloads(home: string, log: (msg: string) => void = () => undefined): Promise<number> {
  let killed = 0;
  const deadline = Date.now() + 10000;
  for (;;) {
    const procs = findWorkloadProcesses(home);
    if (procs.length === 0) break;
    if (Date.now() > deadline)
      throw new Error(`workload processes still running after SIGKILL: ${procs.map((p) => p.pid).join(', ')}`);
    for (const p of procs) {
      try {
        process.kill(p.pid, 'SIGKILL');
        killed++;
        log(`stopped workload process ${p.pid} (${p.label})`);
      } catch {
        /* gone meanwhile */
      }
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  for (const dir of knownNodeDirs(home)) fs.rmSync(processRegistryDir(dir), { recursive: true, force: true });
  return killed;
}
