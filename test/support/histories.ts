import * as fs from 'node:fs';
import * as path from 'node:path';
import type { WorkflowHandle } from '@temporalio/client';
import { temporal } from '@temporalio/proto';

export const HISTORY_DIR = path.resolve(__dirname, '..', 'histories');

/**
 * Saves the history of a finished e2e workflow (binary protobuf, as the server sends it) so that
 * test/workflows/replay.test.ts replays it against the current workflow code: a change that breaks
 * determinism fails there. Set KYBERNATE_RECORD_HISTORIES=1 to refresh the committed ones.
 */
export async function recordHistory(name: string, handle: WorkflowHandle): Promise<void> {
  if (!process.env.KYBERNATE_RECORD_HISTORIES) return;
  const history = await handle.fetchHistory();
  fs.mkdirSync(HISTORY_DIR, { recursive: true });
  fs.writeFileSync(path.join(HISTORY_DIR, `${name}.pb`), temporal.api.history.v1.History.encode(history).finish());
}

/**
 * Every recorded history, those of earlier workflow versions (in subdirectories, e.g. before-staging/) too:
 * workflows started before a deploy must still replay on the new code.
 */
export function loadHistories(): { workflowId: string; history: temporal.api.history.v1.IHistory }[] {
  if (!fs.existsSync(HISTORY_DIR)) return [];
  const files = fs
    .readdirSync(HISTORY_DIR, { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.pb'))
    .sort();
  return files.map((f) => ({
    workflowId: f.replace(/\.pb$/, ''),
    history: temporal.api.history.v1.History.decode(fs.readFileSync(path.join(HISTORY_DIR, f))),
  }));
}
