/**
 * Checks a cron expression before a schedule is created, so a typo is refused naming the flag rather than by
 * Temporal's frontend (or, worse, accepted as something else). The standard five fields (minute hour
 * day-of-month month day-of-week) with `*`, numbers, names (jan-dec, sun-sat), ranges `a-b`, steps `/n` and
 * lists `a,b`; or one of @yearly @annually @monthly @weekly @daily @midnight @hourly. Pure.
 */
const ALIASES = ['@yearly', '@annually', '@monthly', '@weekly', '@daily', '@midnight', '@hourly'];
const MONTHS = ['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep', 'oct', 'nov', 'dec'];
const DAYS = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'];

interface Field {
  name: string;
  min: number;
  max: number;
  names?: string[];
  /** The number of names[0] (jan is 1, sun is 0). */
  namesFrom?: number;
}
const FIELDS: Field[] = [
  { name: 'minute', min: 0, max: 59 },
  { name: 'hour', min: 0, max: 23 },
  { name: 'day of month', min: 1, max: 31 },
  { name: 'month', min: 1, max: 12, names: MONTHS, namesFrom: 1 },
  // 7 is Sunday too, as in most crons.
  { name: 'day of week', min: 0, max: 7, names: DAYS, namesFrom: 0 },
];

function value(f: Field, text: string): number | string {
  const lower = text.toLowerCase();
  if (f.names && f.names.includes(lower)) return f.names.indexOf(lower) + (f.namesFrom ?? 0);
  if (!/^[0-9]+$/.test(text)) return `'${text}' is not a number${f.names ? ' or a name' : ''}`;
  const n = Number(text);
  if (n < f.min || n > f.max) return `${n} is outside ${f.min}-${f.max}`;
  return n;
}

function fieldProblem(f: Field, text: string): string | null {
  for (const part of text.split(',')) {
    if (part === '') return 'an empty list item';
    const [range, step, extra] = part.split('/');
    if (extra !== undefined) return `'${part}' has two steps`;
    if (step !== undefined && (!/^[0-9]+$/.test(step) || Number(step) < 1 || Number(step) > f.max))
      return `step '${step}' must be a number from 1 to ${f.max}`;
    if (range === '*') continue;
    const ends = range.split('-');
    if (ends.length > 2) return `'${range}' is not a range`;
    const vals = ends.map((e) => value(f, e));
    const bad = vals.find((v) => typeof v === 'string');
    if (bad !== undefined) return bad as string;
    if (vals.length === 2 && (vals[0] as number) > (vals[1] as number)) return `range '${range}' runs backwards`;
  }
  return null;
}

/** What is wrong with a cron expression, or null. */
export function cronProblem(expr: string): string | null {
  const text = expr.trim();
  if (text.length === 0) return 'is empty';
  if (text.startsWith('@'))
    return ALIASES.includes(text.toLowerCase()) ? null : `'${text}' is not one of ${ALIASES.join(' ')}`;
  const parts = text.split(/\s+/);
  if (parts.length !== FIELDS.length)
    return `must have 5 fields (minute hour day-of-month month day-of-week), got ${parts.length}`;
  for (const [i, f] of FIELDS.entries()) {
    const p = fieldProblem(f, parts[i]);
    if (p) return `${f.name} field '${parts[i]}': ${p}`;
  }
  return null;
}
