import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

const REPO_ROOT = path.resolve(__dirname, '..', '..');
const major = (version: string): number => Number(version.replace(/^v/, '').split('.')[0]);

// The suite, the stack it starts and the README's commands run on Node 24 (deploy/local/node.sh): Node 20 is
// past its end of life, and the AWS SDK warns on every client it builds under it.
describe('Node version', () => {
  test('the tests run under Node >= 24, as package.json requires', () => {
    const engines = (
      JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { engines: { node: string } }
    ).engines;
    expect(engines.node).toBe('>=24');
    expect(major(process.versions.node)).toBeGreaterThanOrEqual(24);
  });

  test('deploy/local/node.sh runs Node >= 24 and puts it first on PATH for what it starts', () => {
    const out = execFileSync(
      'bash',
      [
        path.join(REPO_ROOT, 'deploy', 'local', 'node.sh'),
        '-e',
        "process.stdout.write(process.version + ' ' + require('node:child_process').execFileSync('node', ['--version'], { encoding: 'utf8' }).trim())",
      ],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] },
    );
    const [self, child] = out.split(' ');
    expect(major(self)).toBeGreaterThanOrEqual(24);
    expect(child).toBe(self);
  });
});
