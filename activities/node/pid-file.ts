import * as fs from 'node:fs';
import type { ProcessIdentity } from '../../common/journal';

/**
 * <workload dir>/pid names the job's process. Read by the agent and by the local stack's `down` and watchdog,
 * which is why it has no other dependency. JSON {pid, startTime}, written whole (rename); files written before
 * start times were kept hold a plain number, and are still read.
 */
export function writePidFile(file: string, id: ProcessIdentity): void {
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(id));
  fs.renameSync(tmp, file);
}

export function readPidFile(file: string): { pid: number; startTime?: number } | null {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8').trim();
  } catch {
    return null;
  }
  if (/^[0-9]+$/.test(text)) return { pid: Number(text) };
  try {
    const v = JSON.parse(text) as { pid?: unknown; startTime?: unknown };
    if (typeof v.pid !== 'number' || !Number.isInteger(v.pid) || v.pid < 1) return null;
    return typeof v.startTime === 'number' ? { pid: v.pid, startTime: v.startTime } : { pid: v.pid };
  } catch {
    return null;
  }
}
