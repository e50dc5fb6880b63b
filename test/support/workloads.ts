import * as fs from 'node:fs';
import * as path from 'node:path';

/** Workloads outlive agents by design; a test run must still not leave any behind. */
export function killStrayWorkloads(home: string): void {
  const nodes = path.join(home, 'nodes');
  if (!fs.existsSync(nodes)) return;
  for (const node of fs.readdirSync(nodes)) {
    const wl = path.join(nodes, node, 'workloads');
    if (!fs.existsSync(wl)) continue;
    for (const job of fs.readdirSync(wl)) {
      const pidFile = path.join(wl, job, 'pid');
      if (!fs.existsSync(pidFile)) continue;
      const pid = Number(fs.readFileSync(pidFile, 'utf8'));
      try {
        if (fs.readFileSync(`/proc/${pid}/environ`, 'utf8').includes(`KYBERNATE_JOB_ID=${job}`)) process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
}
