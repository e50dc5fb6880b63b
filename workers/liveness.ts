import type { GpuInventory, NodeInventory } from '../activities/node/inventory';
import type { NodeActivities } from '../activities/node';

/** The longest the agent waits without any watch before registering again, however often it already did. */
export const REGISTER_BACKOFF_MAX_MS = 2 * 60_000;

/**
 * How much longer than its registration took to be accepted an agent gives the watch to arrive. The time
 * Temporal took to accept the signal measures the backlog in front of it; the watch comes only after the
 * registration's workflow task ran behind a similar backlog on the control worker. In the 1000-agent storm
 * (bench/registration.ts) signals took 12-14 s and watches came 3x (p50) to 5.5x (p99) that late: with a plain
 * node timeout nearly every agent registered again once or twice (844-1414 extra signals into the backlog).
 */
export const REGISTER_PATIENCE_FACTOR = 4;

/**
 * When an agent registers again. A registration is a signal (a workflow task on the control worker), so it is
 * rare: once at start, then only when no watch activity has run for a whole node timeout (the registry never
 * scheduled one, declared the node Unhealthy after an outage, or is a new run that has not heard of this agent),
 * the wait doubling up to REGISTER_BACKOFF_MAX_MS while none comes, so a reconnect storm of agents whose
 * watches are late does not add a signal per agent per timeout. A registration that was slow to be accepted
 * (a loaded control plane) stretches the wait after it to REGISTER_PATIENCE_FACTOR times that delay past the
 * timeout, within the same maximum.
 */
export class WatchWatchdog {
  private running = 0;
  private quietSince: number | null = null;
  private wait: number;
  private patience = 0;

  constructor(private readonly nodeTimeoutMs: number) {
    this.wait = nodeTimeoutMs;
  }

  /** A registration was accepted at nowMs, acceptedAfterMs after it was sent. */
  registered(nowMs: number, acceptedAfterMs = 0): void {
    if (this.running === 0) this.quietSince = nowMs;
    this.patience = Math.max(0, REGISTER_PATIENCE_FACTOR * acceptedAfterMs);
  }

  started(): void {
    this.running++;
    this.quietSince = null;
    this.wait = this.nodeTimeoutMs;
  }

  ended(nowMs = Date.now()): void {
    this.running = Math.max(0, this.running - 1);
    if (this.running === 0) this.quietSince = nowMs;
  }

  mustRegister(nowMs: number): boolean {
    const wait = Math.max(this.wait, Math.min(this.nodeTimeoutMs + this.patience, REGISTER_BACKOFF_MAX_MS));
    if (this.running > 0 || this.quietSince === null || nowMs - this.quietSince < wait) return false;
    this.wait = Math.min(this.wait * 2, REGISTER_BACKOFF_MAX_MS);
    return true;
  }
}

/** A report goes at least this often, changed or not (and it is the registry's "last seen" for a watched node). */
export const REPORT_AT_LEAST_MS = 5 * 60_000;
/** Free VRAM or disk moving by less than this share of the total (or of the last value) is no change. */
const CHANGE_SHARE = 0.05;
const VRAM_MARGIN_BYTES = 256 * 1024 ** 2;
const DISK_MARGIN_BYTES = 1024 ** 3;

/**
 * When an inventory report goes to the registry: each one is a signal, a workflow task on the control worker
 * (every 30 s for 1000 agents: 33 tasks/s). The rule: at once when it changed in a way placement reads (zone,
 * the GPUs or their total VRAM, free VRAM (in all or on one GPU) by more than max(256 MiB, 5% of total), free disk by more than
 * max(1 GiB, 5%), how limits are enforced, driver/CUDA version), and otherwise at least every REPORT_AT_LEAST_MS.
 */
export class ReportRule {
  private last: NodeInventory | null = null;
  private lastAt = 0;
  /** Work ended so far (workDone calls), and how many of them the last sent report was read after. */
  private works = 0;
  private reportedWorks = 0;

  due(inv: NodeInventory, nowMs: number): boolean {
    return (
      this.last === null ||
      this.works > this.reportedWorks ||
      nowMs - this.lastAt >= REPORT_AT_LEAST_MS ||
      placementChange(this.last, inv)
    );
  }

  /**
   * This agent's own work ended (a restore, dump, start or kill): what it moved (VRAM in use, disk) may be below
   * the margins, yet it is exact and the next placement may read it, so the next read goes out whatever it shows.
   */
  workDone(): void {
    this.works++;
  }

  /** Taken before reading the inventory: work that ends during the read is reported by the next one. */
  mark(): number {
    return this.works;
  }

  sent(inv: NodeInventory, nowMs: number, mark = this.works): void {
    this.last = inv;
    this.lastAt = nowMs;
    this.reportedWorks = Math.max(this.reportedWorks, mark);
  }
}

export function placementChange(a: NodeInventory, b: NodeInventory): boolean {
  const moved = (x: number, y: number, total: number, floor: number): boolean =>
    Math.abs(x - y) > Math.max(floor, CHANGE_SHARE * Math.max(total, x, y));
  const sameGpu = (g: GpuInventory, h: GpuInventory | undefined): boolean =>
    h !== undefined &&
    g.index === h.index &&
    g.uuid === h.uuid &&
    g.model === h.model &&
    g.totalVramBytes === h.totalVramBytes &&
    !moved(g.freeVramBytes, h.freeVramBytes, g.totalVramBytes, VRAM_MARGIN_BYTES);
  return (
    a.zone !== b.zone ||
    a.vramSource !== b.vramSource ||
    a.totalVramBytes !== b.totalVramBytes ||
    a.gpus.length !== b.gpus.length ||
    !a.gpus.every((g, i) => sameGpu(g, b.gpus[i])) ||
    a.cgroups !== b.cgroups ||
    a.driverVersion !== b.driverVersion ||
    a.cudaVersion !== b.cudaVersion ||
    moved(a.freeVramBytes, b.freeVramBytes, a.totalVramBytes, VRAM_MARGIN_BYTES) ||
    moved(a.freeDiskBytes, b.freeDiskBytes, 0, DISK_MARGIN_BYTES)
  );
}

/**
 * The node activities whose end may move what the inventory shows: VRAM in use (CUDA checkpoint/restore, a
 * process started, restored, stopped or exited) or free disk (a dump, fetch, copy or delete).
 */
export const MOVES_INVENTORY = [
  'adoptWorkload',
  'awaitRunExit',
  'criuDump',
  'criuRestore',
  'cudaCheckpoint',
  'cudaRestore',
  'deleteCheckpointDir',
  'fetch',
  'finishDump',
  'killProcess',
  'persist',
  'releaseStaging',
  'startRun',
  'startWorkload',
  'stopRun',
  'stopWorkload',
] as const satisfies ReadonlyArray<keyof NodeActivities>;

/** The activities with `done` called after each of MOVES_INVENTORY ends, however it ends. */
export function reportingAfter(acts: NodeActivities, done: () => void): NodeActivities {
  const out = { ...acts };
  for (const name of MOVES_INVENTORY) {
    const fn = acts[name] as (...args: unknown[]) => Promise<unknown>;
    (out as Record<string, unknown>)[name] = async (...args: unknown[]): Promise<unknown> => {
      try {
        return await fn(...args);
      } finally {
        done();
      }
    };
  }
  return out;
}
