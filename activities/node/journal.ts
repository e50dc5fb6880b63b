import * as fs from 'node:fs';
import * as path from 'node:path';
import { type JournalEntry, type JournalKind, type StepOutcome, stepOutcome } from '../../common/journal';
import { type NodeContext, safeId } from './context';
import { processAlive } from './process';

/**
 * <dataDir>/journal/<kind>/<id>.jsonl: one JSON line per step event, appended and fsynced before the call
 * returns, so it outlives an agent crash or a reboot. Lives on disk even when the data is staged in memory:
 * memory is gone after a reboot, and the journal must then say so.
 */
export const journalFile = (ctx: NodeContext, kind: JournalKind, id: string): string =>
  path.join(ctx.dataDir, 'journal', kind, `${safeId(`${kind}Id`, id)}.jsonl`);

export function appendJournal(
  ctx: NodeContext,
  kind: JournalKind,
  id: string,
  entry: Omit<JournalEntry, 'at' | 'agentPid'>,
): void {
  const file = journalFile(ctx, kind, id);
  const fresh = !fs.existsSync(file);
  if (fresh) fs.mkdirSync(path.dirname(file), { recursive: true });
  const line =
    JSON.stringify({ ...entry, at: new Date().toISOString(), agentPid: process.pid } satisfies JournalEntry) + '\n';
  const fd = fs.openSync(file, 'a');
  try {
    fs.writeSync(fd, line);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  if (fresh) {
    const dfd = fs.openSync(path.dirname(file), 'r');
    try {
      fs.fsyncSync(dfd);
    } finally {
      fs.closeSync(dfd);
    }
  }
}

/** Every entry; a line torn by a crash mid-write (the last one) is skipped, not fatal. */
export function readJournal(ctx: NodeContext, kind: JournalKind, id: string): JournalEntry[] {
  let text: string;
  try {
    text = fs.readFileSync(journalFile(ctx, kind, id), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  const out: JournalEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    try {
      out.push(JSON.parse(line) as JournalEntry);
    } catch {
      /* torn write */
    }
  }
  return out;
}

export function journalOutcome(ctx: NodeContext, kind: JournalKind, id: string, step: string): StepOutcome {
  return stepOutcome(readJournal(ctx, kind, id), step, (pid) => pid === process.pid || processAlive(pid));
}

/**
 * Runs one step's side effect between a 'started' and a 'done' / 'failed' record. `summarize` picks what of
 * the result is worth keeping (it must be JSON).
 */
export async function journaled<T>(
  ctx: NodeContext,
  kind: JournalKind,
  id: string,
  step: string,
  fn: () => Promise<T>,
  summarize: (r: T) => Record<string, unknown> = () => ({}),
  started: Record<string, unknown> = {},
): Promise<T> {
  appendJournal(ctx, kind, id, { step, state: 'started', data: started });
  try {
    const r = await fn();
    appendJournal(ctx, kind, id, { step, state: 'done', data: summarize(r) });
    return r;
  } catch (e) {
    const err = e as Error & { type?: string };
    appendJournal(ctx, kind, id, { step, state: 'failed', data: { type: err.type ?? err.name, message: err.message } });
    throw e;
  }
}

export function deleteJournal(ctx: NodeContext, kind: JournalKind, id: string): void {
  fs.rmSync(journalFile(ctx, kind, id), { force: true });
}
