import { MAX_CONCURRENCY, partSizeFor, transferPlan } from '../../activities/s3-client';

const MiB = 1 << 20;
const GiB = 1 << 30;
const big = { cores: 16, memoryBytes: 64 * GiB };

describe('transferPlan: part size and parts in flight', () => {
  test('part size is 16 MiB until 10,000 parts would not hold the file, then grows in whole MiB', () => {
    expect(transferPlan(4 * GiB, big).partSize).toBe(16 * MiB);
    expect(transferPlan(160e9, big).partSize).toBe(16 * MiB);
    const huge = 5e12;
    const p = transferPlan(huge, big).partSize;
    expect(p).toBeGreaterThan(16 * MiB);
    expect(p % MiB).toBe(0);
    expect(Math.ceil(huge / p)).toBeLessThanOrEqual(10000);
  });

  test('part size depends on the file only, never on the machine (a retry elsewhere resumes the same upload)', () => {
    for (const size of [1, 100 * MiB, 4 * GiB, 300e9]) {
      const a = transferPlan(size, { cores: 1, memoryBytes: 512 * MiB }).partSize;
      expect(transferPlan(size, big).partSize).toBe(a);
      expect(a).toBe(partSizeFor(size));
    }
  });

  test('two parts in flight per core, at least 8, at most MAX_CONCURRENCY', () => {
    const mem = 64 * GiB;
    expect(transferPlan(4 * GiB, { cores: 1, memoryBytes: mem }).concurrency).toBe(8);
    expect(transferPlan(4 * GiB, { cores: 2, memoryBytes: mem }).concurrency).toBe(8);
    expect(transferPlan(4 * GiB, { cores: 6, memoryBytes: mem }).concurrency).toBe(12);
    expect(transferPlan(4 * GiB, { cores: 128, memoryBytes: mem }).concurrency).toBe(MAX_CONCURRENCY);
  });

  test('the buffers in flight stay under 1/32 of memory, and at least one part always moves', () => {
    const small = { cores: 16, memoryBytes: 2 * GiB };
    const p = transferPlan(4 * GiB, small);
    expect(p.concurrency * p.partSize).toBeLessThanOrEqual(small.memoryBytes / 32);
    expect(p.concurrency).toBe(4);
    expect(transferPlan(4 * GiB, { cores: 16, memoryBytes: 64 * MiB }).concurrency).toBe(1);
  });

  test('a size that is no byte count is refused, naming it', () => {
    expect(() => transferPlan(-1, big)).toThrow(/fileSize: -1/);
    expect(() => transferPlan(Number.NaN, big)).toThrow(/fileSize/);
  });
});
