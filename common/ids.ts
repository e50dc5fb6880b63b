/** Identifiers become workflow ids, directory names and S3 keys, so only a conservative alphabet is allowed. */
export const SAFE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/**
 * C0 and C1 controls, DEL, Unicode line/paragraph separators and bidi overrides: characters that move the
 * cursor, recolour or rewrite what a terminal shows (an ESC sequence, a forged newline, reordered text).
 */
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
const NAMED: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

/**
 * Text safe to print on a terminal: every control character is written as an escape (\n, \x1b, \u202e).
 * Use it on anything that echoes input (ids, paths, options) or text that came from outside (Temporal, S3).
 */
export function printable(text: string): string {
  return text.replace(UNPRINTABLE, (c) => {
    const code = c.charCodeAt(0);
    return (
      NAMED[c] ??
      (code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`)
    );
  });
}

/** A rejected input: the field it was given in and why. Its message is printable (see printable()). */
export class InvalidInputError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(printable(`${field}: ${message}`));
    this.name = 'InvalidInputError';
  }
}

/** Whether assertSafeId would take the value: for names read from disk, where a bad one is skipped, not an error. */
export function isSafeId(value: string): boolean {
  try {
    assertSafeId('id', value);
    return true;
  } catch {
    return false;
  }
}

export function assertSafeId(field: string, value: unknown): string {
  if (typeof value !== 'string' || value.length === 0) throw new InvalidInputError(field, 'is required');
  if (value.includes('/') || value.includes('\\'))
    throw new InvalidInputError(field, `must not contain a path separator (got '${value}')`);
  if (value.includes('..')) throw new InvalidInputError(field, `must not contain '..' (got '${value}')`);
  if (!SAFE_ID.test(value)) {
    throw new InvalidInputError(
      field,
      `must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a letter or digit (got '${value}')`,
    );
  }
  return value;
}

export function assertPid(field: string, value: unknown): number {
  const n = typeof value === 'string' && /^[0-9]+$/.test(value) ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 2 || n > 4194304) {
    throw new InvalidInputError(field, `must be a process id between 2 and 4194304 (got '${String(value)}')`);
  }
  return n;
}

/**
 * JSON text safe to print: JSON.stringify escapes C0 controls but leaves DEL, C1 controls, line separators and
 * bidi overrides raw; those are written as \uXXXX, which keeps it valid JSON.
 */
export function printableJson(json: string): string {
  return json.replace(
    /[\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}
