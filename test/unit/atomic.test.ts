import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { listFiles, readMetadata, sha256File, writeFileAtomic } from '../../activities/node/seal';

describe('local files', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kyb-unit-'));
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('writeFileAtomic replaces the file whole and leaves no temporary behind', () => {
    const f = path.join(dir, 'metadata.json');
    writeFileAtomic(f, 'one');
    writeFileAtomic(f, 'two');
    expect(fs.readFileSync(f, 'utf8')).toBe('two');
    expect(fs.readdirSync(dir).filter((n) => n.includes('.tmp-'))).toEqual([]);
  });

  test('sha256File matches a known digest', async () => {
    const f = path.join(dir, 'abc');
    fs.writeFileSync(f, 'abc');
    expect(await sha256File(f)).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  });

  test('listFiles walks subdirectories in sorted order', () => {
    fs.mkdirSync(path.join(dir, 'images'), { recursive: true });
    fs.writeFileSync(path.join(dir, 'images', 'b.img'), '');
    fs.writeFileSync(path.join(dir, 'images', 'a.img'), '');
    expect(listFiles(dir).filter((f) => f.startsWith('images/'))).toEqual(['images/a.img', 'images/b.img']);
  });

  test('readMetadata names the bad field', () => {
    fs.writeFileSync(path.join(dir, 'metadata.json'), JSON.stringify({ format: 'kybernate.checkpoint/v1' }));
    expect(() => readMetadata(dir)).toThrow(/field 'checkpointId'/);
  });
});
