import { parseBytes } from '../../clients/bytes';
import { assertPid, assertSafeId, InvalidInputError } from '../../common/ids';
import { MetadataSchema } from '../../common/metadata';
import { partSizeFor } from '../../activities/s3-client';

describe('identifiers', () => {
  test.each(['job-1', 'a', 'A.b_c-9', 'x'.repeat(128)])('accepts %s', (id) => {
    expect(assertSafeId('job', id)).toBe(id);
  });
  test.each([
    ['', 'is required'],
    ['a/b', 'path separator'],
    ['a\\b', 'path separator'],
    ['..', "'..'"],
    ['a..b', "'..'"],
    ['-lead', 'starting with a letter or digit'],
    ['sp ace', 'letters, digits'],
    ['x'.repeat(129), '1-128 characters'],
  ])('rejects %j naming the field', (id, why) => {
    expect(() => assertSafeId('job', id)).toThrow(InvalidInputError);
    expect(() => assertSafeId('job', id)).toThrow(new RegExp(`^job: .*${why.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
  });
  test('pids', () => {
    expect(assertPid('pid', '1234')).toBe(1234);
    expect(() => assertPid('pid', '0')).toThrow(/^pid: /);
    expect(() => assertPid('pid', '12a')).toThrow(/^pid: /);
    expect(() => assertPid('pid', 1.5)).toThrow(/^pid: /);
  });
});

describe('sizes', () => {
  test('parses units', () => {
    expect(parseBytes('v', '8GiB')).toBe(8 * 1024 ** 3);
    expect(parseBytes('v', '512 MiB')).toBe(512 * 1024 ** 2);
    expect(parseBytes('v', '1.5G')).toBe(1.5e9);
    expect(parseBytes('v', '1024')).toBe(1024);
    expect(() => parseBytes('declared-vram', '8 apples')).toThrow(/^declared-vram: /);
  });
});

describe('S3 part size', () => {
  test('stays at the preferred size while 10,000 parts suffice, grows past it', () => {
    expect(partSizeFor(1 << 30)).toBe(16 << 20);
    const eighty = 80e9;
    expect(partSizeFor(eighty, 8 << 20)).toBeGreaterThanOrEqual(8 << 20);
    expect(Math.ceil(eighty / partSizeFor(eighty, 5 << 20))).toBeLessThanOrEqual(10000);
    const huge = 5e12;
    expect(Math.ceil(huge / partSizeFor(huge))).toBeLessThanOrEqual(10000);
  });
});

describe('metadata.json schema', () => {
  const good = {
    format: 'kybernate.checkpoint/v1', checkpointId: 'c', jobId: 'j', node: 'n', pid: 1, createdAt: '2026-01-01T00:00:00Z', criuVersion: '4.1.1',
    cuda: { checkpointed: false, vramBytes: 0 }, workloadFiles: [], files: [{ path: 'images/pages-1.img', size: 10, sha256: 'a'.repeat(64) }],
  };
  test('accepts a valid document', () => {
    expect(MetadataSchema.parse(good).files).toHaveLength(1);
  });
  test.each([
    ['absolute path', { path: '/etc/passwd', size: 1, sha256: 'a'.repeat(64) }],
    ['path escaping the checkpoint', { path: 'images/../../x', size: 1, sha256: 'a'.repeat(64) }],
    ['bad checksum', { path: 'x', size: 1, sha256: 'xyz' }],
    ['negative size', { path: 'x', size: -1, sha256: 'a'.repeat(64) }],
  ])('rejects a file entry with %s', (_why, entry) => {
    const r = MetadataSchema.safeParse({ ...good, files: [entry] });
    expect(r.success).toBe(false);
    expect(r.error?.issues[0].path[0]).toBe('files');
  });
});
