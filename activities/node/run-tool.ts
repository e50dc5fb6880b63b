import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { Context } from '@temporalio/activity';

export interface ToolResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
  stdout: string;
}

/**
 * Runs an external tool (criu) from an activity: heartbeats while it runs so a dead agent is noticed, and
 * kills the tool when the activity is cancelled so nothing runs on behind the workflow's back.
 */
export async function runTool(
  bin: string,
  args: string[],
  opts: { heartbeatMs?: number; details?: () => unknown } = {},
): Promise<ToolResult> {
  const ctx = activityContext();
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const beat = setInterval(() => ctx?.heartbeat(opts.details?.()), opts.heartbeatMs ?? 1000);
    // Killed only when the workflow asked for it. An activity the server timed out (heartbeats lost while
    // Temporal or the network was away) runs on: the node journal records how it ended and the workflow reads
    // that, whereas a CRIU killed mid-dump would leave the process in a state nobody knows.
    const onCancel = ctx?.cancelled.catch(() => {
      if (ctx.cancellationDetails?.cancelRequested !== false) child.kill('SIGKILL');
    });
    void onCancel;
    child.on('error', (e) => {
      clearInterval(beat);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearInterval(beat);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

function activityContext(): Context | null {
  try {
    return Context.current();
  } catch {
    return null; // called outside an activity (benchmarks, tools)
  }
}

export function heartbeat(details?: unknown): void {
  activityContext()?.heartbeat(details);
}

export function lastLines(file: string, n: number): string {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-n).join('\n');
  } catch {
    return '';
  }
}

/** CRIU's "Error (file:line): ..." lines: the reason sits among them, not necessarily at the log's end. */
export function errorLines(file: string): string[] {
  try {
    return fs
      .readFileSync(file, 'utf8')
      .split('\n')
      .filter((l) => l.includes('Error ('));
  } catch {
    return [];
  }
}
