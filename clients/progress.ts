import { SingleBar } from 'cli-progress';
import { formatBytes } from './bytes';

/** What a progress display shows of a workflow's status. */
export interface ProgressView {
  phase: string;
  /** Bytes moved so far in this phase, when the status says (an upload's bytesSent, a `progress` record). */
  bytesDone: number | null;
  /** Bytes this phase will move, when known (then the ETA can be had). */
  bytesTotal: number | null;
}

const isRecord = (x: unknown): x is Record<string, unknown> => typeof x === 'object' && x !== null;
const num = (x: unknown): number | null => (typeof x === 'number' && Number.isFinite(x) && x >= 0 ? x : null);

/**
 * The phase and byte counts of any of the workflows' statuses (checkpoint, restore, migrate: `phase`; job:
 * `state`). Bytes come from a `progress: { bytesDone, bytesTotal }` record when a status carries one, else from
 * a finished upload's bytesSent; the statuses report no live byte counts today, so mostly the phase shows.
 */
export function progressOf(status: unknown): ProgressView | null {
  if (!isRecord(status)) return null;
  const phase =
    typeof status.phase === 'string' ? status.phase : typeof status.state === 'string' ? status.state : null;
  if (phase === null) return null;
  const p = isRecord(status.progress) ? status.progress : null;
  const upload = isRecord(status.upload) ? status.upload : null;
  const bytesDone = num(p?.bytesDone) ?? num(upload?.bytesSent);
  return { phase, bytesDone, bytesTotal: num(p?.bytesTotal) };
}

/** Bytes per second between two samples, or null when there is no second sample or nothing moved. */
export function rateOf(prev: { bytes: number; at: number } | null, bytes: number, at: number): number | null {
  if (!prev || at <= prev.at || bytes < prev.bytes) return null;
  return ((bytes - prev.bytes) * 1000) / (at - prev.at);
}

/** Seconds left at this rate, or null when it cannot be said. */
export function etaSeconds(view: ProgressView, rate: number | null): number | null {
  if (view.bytesDone === null || view.bytesTotal === null || !rate || rate <= 0) return null;
  return Math.max(0, Math.round((view.bytesTotal - view.bytesDone) / rate));
}

/** The plain line a phase change prints when the output is not a terminal: `<label>: <phase>[, <bytes>]`. */
export function phaseLine(label: string, view: ProgressView): string {
  const bytes =
    view.bytesDone === null
      ? ''
      : `, ${formatBytes(view.bytesDone)}${view.bytesTotal !== null ? ` of ${formatBytes(view.bytesTotal)}` : ''}`;
  return `${label}: ${view.phase}${bytes}`;
}

/**
 * Shows a waiting command's progress on stderr (stdout keeps the command's result): on a terminal a bar
 * (cli-progress: phase, bytes, rate, ETA, redrawn as statuses come), else one plain line per phase change.
 */
export class ProgressDisplay {
  private bar: SingleBar | null = null;
  private lastPhase: string | null = null;
  private prev: { bytes: number; at: number } | null = null;

  constructor(
    private readonly label: string,
    private readonly opts: { tty: boolean; stream: NodeJS.WritableStream; now?: () => number },
  ) {}

  update(status: unknown): void {
    const view = progressOf(status);
    if (!view) return;
    if (!this.opts.tty) {
      if (view.phase !== this.lastPhase) this.opts.stream.write(`${phaseLine(this.label, view)}\n`);
      this.lastPhase = view.phase;
      return;
    }
    const at = (this.opts.now ?? Date.now)();
    if (view.phase !== this.lastPhase) this.prev = null; // a new phase: its rate starts over
    const rate = view.bytesDone === null ? null : rateOf(this.prev, view.bytesDone, at);
    if (view.bytesDone !== null) this.prev = { bytes: view.bytesDone, at };
    const eta = etaSeconds(view, rate);
    const payload = {
      label: this.label,
      phase: view.phase.padEnd(16),
      bytes:
        view.bytesDone === null
          ? ''
          : `${formatBytes(view.bytesDone)}${view.bytesTotal !== null ? ` / ${formatBytes(view.bytesTotal)}` : ''}`,
      rate: rate === null ? '' : `${formatBytes(rate)}/s`,
      etaText: eta === null ? '' : `ETA ${eta}s`,
    };
    const total = view.bytesTotal ?? 1;
    const value = view.bytesTotal !== null && view.bytesDone !== null ? Math.min(view.bytesDone, total) : 0;
    if (!this.bar) {
      this.bar = new SingleBar({
        stream: this.opts.stream,
        hideCursor: true,
        clearOnComplete: false,
        barsize: 24,
        format: '{label} {phase} [{bar}] {bytes} {rate} {etaText} {duration_formatted}',
      });
      this.bar.start(total, value, payload);
    } else {
      this.bar.setTotal(total);
      this.bar.update(value, payload);
    }
    this.lastPhase = view.phase;
  }

  /** Ends the display (a terminal's bar left as it last stood); safe to call more than once. */
  stop(): void {
    this.bar?.stop();
    this.bar = null;
  }
}
