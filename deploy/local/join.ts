import * as path from 'node:path';
import { processIdentity } from '../../activities/node/process';
import { defaultStackHome } from './paths';
import { type ProcessRecord, readStackState, recordAlive, updateState } from './stack';
import { noteNodeDir } from './workloads';

/** Whether a worker talking to this Temporal address belongs to the local stack (its state file names the address). */
export function inLocalStack(temporalAddress: string): boolean {
  const state = readStackState(defaultStackHome());
  return (
    state !== null &&
    (temporalAddress === state.temporal.address || temporalAddress === state.toxiproxy?.routes?.temporal)
  );
}

/**
 * A worker or agent joins the local stack it talks to, however it was started: `kybernate up` (which has
 * registered it already) or by hand in another terminal (`kybernate agent --node x`, `kybernate worker`).
 * Then `status` shows it, `down` stops it, `restart` restarts it, and `down` finds the workloads of an agent
 * whose data directory is outside the stack's home. Outside a local stack (production: no state file, or a
 * Temporal address of its own) it does nothing. Returns what to call on a clean exit: a process that added
 * its own record removes it; one registered by the supervisor leaves the record for `restart` to reuse.
 */
export function joinLocalStack(
  component: string,
  temporalAddress: string,
  opts: { dataDir?: string; metricsAddress?: string | null } = {},
): () => void {
  const home = defaultStackHome();
  if (!inLocalStack(temporalAddress)) return () => undefined;
  if (opts.dataDir) noteNodeDir(home, opts.dataDir);
  let added = false;
  updateState(home, (s) => {
    const registered = s.processes.find((p) => p.pid === process.pid);
    if (registered) {
      // Started by the supervisor: the port this process serves metrics on is its own to record.
      if (opts.metricsAddress) registered.metricsAddress = opts.metricsAddress;
      else delete registered.metricsAddress;
      return;
    }
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) if (k.startsWith('KYBERNATE_') && v !== undefined) env[k] = v;
    const rec: ProcessRecord = {
      component,
      pid: process.pid,
      startTime: processIdentity(process.pid)?.startTime,
      // Its output goes to its terminal; a restart runs it detached with this log.
      log: path.join(home, 'logs', `${component.replace(':', '-')}.log`),
      command: [process.execPath, ...process.argv.slice(1)],
      env,
      cwd: process.cwd(),
      handStarted: true,
      ...(opts.metricsAddress ? { metricsAddress: opts.metricsAddress } : {}),
    };
    // A dead predecessor (a hand-started agent killed with -9 never unregistered) is replaced, not listed twice.
    s.processes = s.processes.filter((p) => p.component !== component || recordAlive(p));
    s.processes.push(rec);
    added = true;
  });
  let left = false;
  const leave = (): void => {
    if (left || !added) return;
    left = true;
    try {
      updateState(home, (s) => {
        s.processes = s.processes.filter((p) => p.pid !== process.pid);
      });
    } catch {
      /* the stack is gone (down removed the state): nothing to forget */
    }
  };
  // A clean exit however it comes: worker.run() returning, or the process exiting some other way.
  process.once('exit', leave);
  return leave;
}
