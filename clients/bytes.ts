import { bytesProblem, MAX_VRAM_BYTES } from '../common/bounds';
import { InvalidInputError } from '../common/ids';

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1e3,
  kb: 1e3,
  kib: 1024,
  m: 1e6,
  mb: 1e6,
  mib: 1024 ** 2,
  g: 1e9,
  gb: 1e9,
  gib: 1024 ** 3,
  t: 1e12,
  tb: 1e12,
  tib: 1024 ** 4,
};

/**
 * "8GiB", "512MiB", "1.5G" or a plain byte count, as a whole number of bytes from 0 to max (default: the VRAM
 * bound, 16 TiB). Exponents ("1e30"), fractions of a byte and anything above max are refused, naming the field.
 */
export function parseBytes(field: string, text: string, max: number = MAX_VRAM_BYTES): number {
  const m = /^\s*([0-9]{1,20}(?:\.[0-9]{1,20})?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m ? UNITS[m[2].toLowerCase()] : undefined;
  if (!m || unit === undefined)
    throw new InvalidInputError(field, `expected a size such as 8GiB, 512MiB or 1073741824 (got '${text}')`);
  const n = Number(m[1]) * unit;
  const problem = bytesProblem(n, max);
  if (problem) throw new InvalidInputError(field, `${problem.replace(/ \(got [^)]*\)$/, '')} (got '${text}')`);
  return n;
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}
