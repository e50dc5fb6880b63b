/** Identifiers become workflow ids, directory names and S3 keys, so only a conservative alphabet is allowed. */
export const SAFE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export class InvalidInputError extends Error {
  constructor(readonly field: string, message: string) {
    super(`${field}: ${message}`);
    this.name = 'InvalidInputError';
  }
}

export function assertSafeId(field: string, value: unknown): string {
  if (typeof value !== 'string' || value.length === 0) throw new InvalidInputError(field, 'is required');
  if (value.includes('/') || value.includes('\\')) throw new InvalidInputError(field, `must not contain a path separator (got '${value}')`);
  if (value.includes('..')) throw new InvalidInputError(field, `must not contain '..' (got '${value}')`);
  if (!SAFE_ID.test(value)) {
    throw new InvalidInputError(field, `must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a letter or digit (got '${value}')`);
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
