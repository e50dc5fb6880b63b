import { durationMs, durationProblem, MAX_DURATION_MS, MIN_DURATION_MS } from '../common/bounds';
import { InvalidInputError } from '../common/ids';

/** "90s", "10m", "2h", "1d": checked to lie from 1s to 7d; returned as written (workflows take the text). */
export function parseDuration(field: string, text: string): string {
  const problem = durationProblem(text);
  if (problem) throw new InvalidInputError(field, problem);
  return text;
}

/** A whole number of seconds from 1 to 7 days' worth, or a duration such as 30s or 5m; returned in ms. */
export function parseSeconds(field: string, text: string): number {
  const ms = /^[0-9]{1,15}$/.test(text) ? Number(text) * 1000 : durationMs(text);
  if (ms === null)
    throw new InvalidInputError(
      field,
      `expected a whole number of seconds, or a duration such as 30s or 5m (got '${text}')`,
    );
  if (ms < MIN_DURATION_MS || ms > MAX_DURATION_MS)
    throw new InvalidInputError(field, `must be from 1s to 7d (got '${text}')`);
  return ms;
}
