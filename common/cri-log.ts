import type { RunLogLine } from './job';

/** One CRI log line: `<RFC3339Nano> <stdout|stderr> <F|P> <text>` (see RunLogLine). */
const CRI_LINE = /^(\S+) (stdout|stderr) ([FP]) (.*)$/s;

/**
 * The whole lines of a CRI-format log in `buf` (read from some byte offset), and how many bytes they take: the
 * caller continues from offset + consumed, so a line being written is read whole the next time, never twice.
 * With `final` (an archived log that no longer grows) a last line without its newline counts too. A line not
 * in the CRI format (a foreign file) is kept as stdout text rather than dropped.
 */
export function parseCriLog(buf: Buffer, final = false): { lines: RunLogLine[]; consumed: number } {
  const lines: RunLogLine[] = [];
  let start = 0;
  for (;;) {
    const nl = buf.indexOf(0x0a, start);
    const end = nl === -1 ? (final && start < buf.length ? buf.length : -1) : nl;
    if (end === -1) break;
    const text = buf.subarray(start, end).toString('utf8');
    const m = CRI_LINE.exec(text);
    lines.push(
      m
        ? { time: m[1], stream: m[2] as RunLogLine['stream'], partial: m[3] === 'P', text: m[4] }
        : { time: '', stream: 'stdout', partial: false, text },
    );
    start = nl === -1 ? buf.length : nl + 1;
  }
  return { lines, consumed: start };
}
