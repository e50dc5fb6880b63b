import * as fs from 'node:fs';
import * as path from 'node:path';

/**
 * Production code runs where there is no repository checkout (a container, a node): nothing under workers/,
 * activities/, workflows/ or clients/ may import deploy/ (deploy/local throws outside a checkout, and is the
 * thing that *sets* configuration, not something production reads). The CLI reaches the local stack only
 * through clients/local-stack.ts, and only with a dynamic import() when a local command runs.
 */
const ROOT = path.resolve(__dirname, '..', '..');
const PRODUCTION = ['workers', 'activities', 'workflows', 'clients', 'common'];
/** Allowed to import deploy/: the local demo, and the CLI's lazily loaded bridge to the local stack. */
const ALLOWED = new Set(['clients/demo.ts', 'clients/local-stack.ts']);

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
    const rel = path.posix.join(dir, e.name);
    if (e.isDirectory()) out.push(...sources(rel));
    else if (e.name.endsWith('.ts')) out.push(rel);
  }
  return out;
}

/** Every module specifier a file loads, with how: statically (import/export from, require) or dynamically (import()). */
function specifiers(text: string): { spec: string; dynamic: boolean }[] {
  const out: { spec: string; dynamic: boolean }[] = [];
  for (const m of text.matchAll(/(?:^|[\s;])(?:import|export)\s[^'"]*?from\s*['"]([^'"]+)['"]/g))
    out.push({ spec: m[1], dynamic: false });
  for (const m of text.matchAll(/(?:^|[\s;])import\s*['"]([^'"]+)['"]/g)) out.push({ spec: m[1], dynamic: false });
  for (const m of text.matchAll(/\brequire\(\s*['"]([^'"]+)['"]\s*\)/g)) out.push({ spec: m[1], dynamic: false });
  for (const m of text.matchAll(/\bimport\(\s*['"]([^'"]+)['"]\s*\)/g)) out.push({ spec: m[1], dynamic: true });
  return out;
}

const resolve = (file: string, spec: string): string =>
  spec.startsWith('.') ? path.posix.normalize(path.posix.join(path.posix.dirname(file), spec)) : spec;

describe('layering', () => {
  const files = PRODUCTION.flatMap(sources);

  test('the scan sees the production sources and their imports', () => {
    expect(files).toEqual(
      expect.arrayContaining(['workers/agent.ts', 'workers/config.ts', 'clients/cli.ts', 'activities/s3-client.ts']),
    );
    // The bridge itself is seen importing deploy/local, so a scan that found nothing would fail here.
    const bridge = specifiers(fs.readFileSync(path.join(ROOT, 'clients/local-stack.ts'), 'utf8')).map((s) =>
      resolve('clients/local-stack.ts', s.spec),
    );
    expect(bridge.some((s) => s.startsWith('deploy/'))).toBe(true);
  });

  test('no production file imports deploy/', () => {
    const offenders = files
      .filter((f) => !ALLOWED.has(f))
      .flatMap((f) =>
        specifiers(fs.readFileSync(path.join(ROOT, f), 'utf8')).map((s) => ({ f, target: resolve(f, s.spec) })),
      )
      .filter(({ target }) => target.startsWith('deploy/'))
      .map(({ f, target }) => `${f} -> ${target}`);
    expect(offenders).toEqual([]);
  });

  test('the local-stack bridge and the demo are loaded only lazily, and only by the CLI', () => {
    const offenders = files
      .flatMap((f) =>
        specifiers(fs.readFileSync(path.join(ROOT, f), 'utf8')).map((s) => ({ f, ...s, target: resolve(f, s.spec) })),
      )
      .filter(({ target }) => ALLOWED.has(`${target}.ts`))
      .filter(({ f, dynamic }) => f !== 'clients/cli.ts' || !dynamic)
      .map(({ f, target, dynamic }) => `${f} -> ${target}${dynamic ? ' (dynamic)' : ' (static)'}`);
    expect(offenders).toEqual([]);
  });
});
