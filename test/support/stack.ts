import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pino from 'pino';
import { KybernateClient } from '../../clients/api';
import type { NodeContext } from '../../activities/node/context';
import { BIN, REPO_ROOT, stagingRootFor } from '../../deploy/local/paths';
import { processAlive } from '../../activities/node/process';
import {
  configFromStack,
  killGroup,
  type ProcessRecord,
  readStackState,
  type StackState,
  unregisterProcess,
} from '../../deploy/local/stack';
import { type AgentSpec, startAgent } from '../../deploy/local/workers';
import { NODE_STALE_MS, placeable } from '../../activities/control';

export function stack(): StackState {
  const home = process.env.KYBERNATE_HOME;
  const s = home ? readStackState(home) : null;
  if (!s) throw new Error('no test stack: jest globalSetup did not run');
  return s;
}

export const client = (): Promise<KybernateClient> => KybernateClient.connect(configFromStack(stack()));

export const PATTERN = path.join(REPO_ROOT, 'deploy', 'workloads', 'pattern.py');
export const PYTHON = '/usr/bin/python3';

export class Agent {
  constructor(
    readonly spec: AgentSpec,
    public rec: ProcessRecord,
  ) {}

  static async start(spec: AgentSpec): Promise<Agent> {
    return new Agent(spec, await startAgent(stack(), spec));
  }

  kill9(): void {
    process.kill(this.rec.pid, 'SIGKILL');
  }

  async restart(): Promise<void> {
    unregisterProcess(this.rec.pid, stack().home);
    this.rec = await startAgent(stack(), this.spec);
  }

  async stop(): Promise<void> {
    await killGroup(this.rec.pid, 3000);
    unregisterProcess(this.rec.pid, stack().home);
  }

  get dataDir(): string {
    return this.spec.dataDir ?? path.join(stack().home, 'nodes', this.spec.node);
  }

  /** Where this agent stages dumps and fetches in memory; null when it never does. */
  get stagingDir(): string | null {
    return this.spec.stagingDir === null
      ? null
      : (this.spec.stagingDir ?? path.join(stagingRootFor(stack().home), this.spec.node));
  }
}

/** Lines of a workload's output file. */
export function output(logFile: string): string[] {
  return fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8').split('\n').filter(Boolean) : [];
}

export function lastTick(logFile: string): number {
  const ticks = output(logFile)
    .filter((l) => l.startsWith('tick '))
    .map((l) => Number(l.slice(5)));
  return ticks.length ? ticks[ticks.length - 1] : -1;
}

export async function until<T>(
  what: string,
  fn: () => Promise<T | null | undefined | false> | T | null | undefined | false,
  timeoutMs = 60000,
  everyMs = 200,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await sleep(everyMs);
  }
  throw new Error(
    `timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${(last as Error).message})` : ''}`,
  );
}

/** Running (not gone, not a zombie): the agent's own check. */
export const alive = processAlive;

/** A node context for calling node activities in-process (CRIU smoke test, verification of uploads). */
export function localNodeContext(node: string, dataDir: string): NodeContext {
  const s = stack();
  return {
    node,
    zone: null,
    dataDir,
    criuBin: BIN.criu,
    initBin: BIN.tini,
    shimBin: BIN.shim,
    criuActionScript: null,
    declaredVramBytes: null,
    stagingDir: null,
    s3: configFromStack(s).s3,
    logger: pino({ level: 'silent' }),
  };
}

/**
 * Waits until no node but `mine` is offered for placement: other suites' agents on the shared stack, stopped
 * moments ago, are placeable while their nodes are Ready (one stopped cleanly is Left at once, one killed goes
 * Unhealthy after its heartbeat timeout), and a restore or job placed by VRAM or compatibility could be sent
 * there (seen in CI: a restore meant to find no compatible node found another suite's stand-in node).
 */
export async function othersNotPlaceable(k: KybernateClient, mine: string[]): Promise<void> {
  const others: string[] = [];
  for await (const wf of k.client.workflow.list({
    query: `WorkflowType = 'nodeRegistry' AND ExecutionStatus = 'Running'`,
  })) {
    const n = wf.workflowId.replace(/^node\//, '');
    if (!mine.includes(n)) others.push(n);
  }
  await until(
    "other suites' nodes out of placement",
    async () => {
      for (const n of others) if (placeable(await k.node(n), Date.now())) return null;
      return true;
    },
    NODE_STALE_MS + 60000,
    1000,
  );
}

/** Processes on this host that belong to the job (the agent gives each workload KYBERNATE_JOB_ID). */
export function jobProcesses(jobId: string): number[] {
  const out: number[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (fs.readFileSync(`/proc/${d}/environ`, 'utf8').split('\0').includes(`KYBERNATE_JOB_ID=${jobId}`))
        out.push(Number(d));
    } catch {
      /* gone or not ours to read */
    }
  }
  return out;
}
