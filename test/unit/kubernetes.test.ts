import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseAllDocuments } from 'yaml';
import { DaemonSet } from 'kubernetes-models/apps/v1/DaemonSet';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Namespace } from 'kubernetes-models/v1/Namespace';
import { Secret } from 'kubernetes-models/v1/Secret';
import { ServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import { ALL_SEARCH_ATTRIBUTES } from '../../common/search-attributes';
import type { IContainer } from 'kubernetes-models/v1/Container';
import type { IPodSpec } from 'kubernetes-models/v1/PodSpec';

/**
 * deploy/kubernetes, checked offline: every object against the Kubernetes API schemas (kubernetes-models'
 * validators, which like `kubectl apply` without --validate=strict do not flag unknown fields), then our own
 * invariants. Each invariant is a function returning its problems, so that the last tests can prove each one
 * fails on a manifest broken on purpose.
 */

const ROOT = path.resolve(__dirname, '..', '..');
const K8S = path.join(ROOT, 'deploy', 'kubernetes');
const DOCKERFILE = path.join(ROOT, 'deploy', 'image', 'Dockerfile');
const IMAGE = 'ghcr.io/kybernate/kybernate';
/** Applied by hand after filling in (never by kustomize): not in kustomization.yaml, and never inline elsewhere. */
const SECRET_EXAMPLE = 'secret.example.yaml';

type Obj = {
  apiVersion: string;
  kind: string;
  metadata?: { name?: string; annotations?: Record<string, string> };
} & Record<string, unknown>;

const VALIDATORS: Record<string, (o: Obj) => void> = {
  'apps/v1/DaemonSet': (o) => new DaemonSet(o as never).validate(),
  'apps/v1/Deployment': (o) => new Deployment(o as never).validate(),
  'v1/ConfigMap': (o) => new ConfigMap(o as never).validate(),
  'v1/Namespace': (o) => new Namespace(o as never).validate(),
  'v1/Secret': (o) => new Secret(o as never).validate(),
  'v1/ServiceAccount': (o) => new ServiceAccount(o as never).validate(),
};

/** Schema problems of one object, or of a kind no validator here knows (a new kind needs one added). */
function schemaProblems(o: Obj): string[] {
  const validate = VALIDATORS[`${o.apiVersion}/${o.kind}`];
  if (!validate) return [`${o.kind} ${o.metadata?.name}: no validator for ${o.apiVersion}/${o.kind}`];
  try {
    validate(o);
    return [];
  } catch (e) {
    return [`${o.kind} ${o.metadata?.name}: ${(e as Error).message}`];
  }
}

function loadFile(file: string): Obj[] {
  const docs = parseAllDocuments(fs.readFileSync(path.join(K8S, file), 'utf8'));
  return docs
    .map((d) => {
      if (d.errors.length > 0) throw new Error(`${file}: ${d.errors.map((e) => e.message).join('; ')}`);
      return d.toJS() as Obj;
    })
    .filter((o) => o !== null);
}

const manifestFiles = fs
  .readdirSync(K8S)
  .filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml')
  .sort();
const byFile = new Map(manifestFiles.map((f) => [f, loadFile(f)]));
const all = [...byFile.values()].flat();
const kustomization = loadFile('kustomization.yaml')[0] as Obj & {
  resources: string[];
  images: { name: string; newTag: string }[];
};
const applied = kustomization.resources.flatMap((f) => byFile.get(f) ?? []);
const pkgVersion = (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string })
  .version;

function find(objs: Obj[], kind: string, name: string): Obj {
  const o = objs.find((x) => x.kind === kind && x.metadata?.name === name);
  if (!o) throw new Error(`no ${kind} ${name} in deploy/kubernetes`);
  return o;
}
const podSpec = (o: Obj): IPodSpec => (o.spec as { template: { spec: IPodSpec } }).template.spec;
const podAnnotations = (o: Obj): Record<string, string> =>
  (o.spec as { template: { metadata?: { annotations?: Record<string, string> } } }).template.metadata?.annotations ??
  {};
const workloads = (objs: Obj[]): Obj[] => objs.filter((o) => o.kind === 'DaemonSet' || o.kind === 'Deployment');
const containersOf = (o: Obj): IContainer[] => [...(podSpec(o).initContainers ?? []), ...podSpec(o).containers];
const clone = <T>(x: T): T => JSON.parse(JSON.stringify(x)) as T;

/** The agent runs as CRIU needs it: privileged, in the host's PID namespace, with its node's name and disks. */
function agentProblems(ds: Obj): string[] {
  const out: string[] = [];
  const spec = podSpec(ds);
  const c = spec.containers.find((x) => x.name === 'agent');
  if (!c) return ['no container named agent'];
  if (spec.hostPID !== true) out.push('hostPID is not true');
  if (spec.hostNetwork !== true || spec.hostIPC !== true)
    out.push("workloads would live in the pod's network or IPC namespace");
  if (spec.hostNetwork === true && spec.dnsPolicy !== 'ClusterFirstWithHostNet')
    out.push('hostNetwork without dnsPolicy ClusterFirstWithHostNet');
  if (c.securityContext?.privileged !== true) out.push('agent container is not privileged');
  const nodeName = c.env?.find((e) => e.name === 'NODE_NAME');
  if (nodeName?.valueFrom?.fieldRef?.fieldPath !== 'spec.nodeName')
    out.push('NODE_NAME does not come from spec.nodeName');
  const argv = [...(c.command ?? []), ...(c.args ?? [])];
  if (argv[argv.indexOf('--node') + 1] !== '$(NODE_NAME)') out.push('--node is not $(NODE_NAME)');
  if (!(spec.tolerations ?? []).some((t) => t.key === 'nvidia.com/gpu')) out.push('no toleration for nvidia.com/gpu');
  if (Object.keys(spec.nodeSelector ?? {}).length === 0) out.push('no nodeSelector');
  if (spec.runtimeClassName !== 'nvidia') out.push('runtimeClassName is not nvidia');
  // Each directory flag and the cgroup root must be a mount of a host path: in the container's own filesystem
  // they would vanish with the pod (checkpoints, staged dumps) or see only the pod's cgroups.
  const hostMount = (dir: string | undefined): string | null => {
    const m = (c.volumeMounts ?? []).find((v) => v.mountPath === dir);
    return m ? ((spec.volumes ?? []).find((v) => v.name === m.name)?.hostPath?.path ?? null) : null;
  };
  for (const flag of ['--data-dir', '--staging-dir']) {
    const i = argv.indexOf(flag);
    if (i < 0 || !hostMount(argv[i + 1])) out.push(`${flag} is not a hostPath mount`);
  }
  const cgroupRoot = c.env?.find((e) => e.name === 'KYBERNATE_CGROUP_ROOT')?.value;
  if (hostMount(cgroupRoot) !== '/sys/fs/cgroup') out.push('KYBERNATE_CGROUP_ROOT is not the host /sys/fs/cgroup');
  if (c.command?.[0] !== '/usr/local/bin/kybernate-enter-host-cgroupns')
    out.push('agent does not start in the host cgroup namespace');
  return out;
}

/** Every container asks for CPU and memory, so the scheduler reserves them. */
function requestProblems(objs: Obj[]): string[] {
  return workloads(objs).flatMap((o) =>
    containersOf(o)
      .filter((c) => c.resources?.requests?.cpu === undefined || c.resources?.requests?.memory === undefined)
      .map((c) => `${o.kind} ${o.metadata?.name}/${c.name}: no cpu and memory requests`),
  );
}

/** One image, at package.json's version, everywhere; the kustomization pins the same tag. */
function imageProblems(objs: Obj[], kust: typeof kustomization): string[] {
  const want = `${IMAGE}:${pkgVersion}`;
  const out = workloads(objs).flatMap((o) =>
    containersOf(o)
      .filter((c) => c.image !== want)
      .map((c) => `${o.kind} ${o.metadata?.name}/${c.name}: image ${c.image}, not ${want}`),
  );
  const pin = kust.images?.find((i) => i.name === IMAGE);
  if (pin?.newTag !== pkgVersion) out.push(`kustomization pins ${IMAGE} at ${pin?.newTag}, not ${pkgVersion}`);
  return out;
}

const SECRET_NAME = /(KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL|CERT_DATA)/;
/** Secret values live only in Secrets the kustomization does not apply, reached by reference. */
function secretProblems(objs: Obj[], resources: string[]): string[] {
  const out: string[] = [];
  if (resources.includes(SECRET_EXAMPLE)) out.push(`kustomization applies ${SECRET_EXAMPLE}`);
  for (const o of objs) {
    if (o.kind === 'Secret') out.push(`Secret ${o.metadata?.name} is applied by the kustomization`);
    if (o.kind === 'ConfigMap') {
      for (const k of Object.keys((o.data as Record<string, string> | undefined) ?? {}))
        if (SECRET_NAME.test(k)) out.push(`ConfigMap ${o.metadata?.name} holds ${k}`);
    }
  }
  for (const o of workloads(objs)) {
    for (const c of containersOf(o)) {
      for (const e of c.env ?? []) {
        if (SECRET_NAME.test(e.name) && e.valueFrom?.secretKeyRef === undefined)
          out.push(`${o.kind} ${o.metadata?.name}/${c.name}: ${e.name} not from a Secret`);
      }
    }
  }
  return out;
}

/** Metrics: a port named metrics on each worker container, and Prometheus annotations pointing at it. */
function metricsProblems(objs: Obj[]): string[] {
  return workloads(objs).flatMap((o) => {
    const ann = podAnnotations(o);
    const port = podSpec(o)
      .containers.flatMap((c) => c.ports ?? [])
      .find((p) => p.name === 'metrics');
    if (!port) return [`${o.kind} ${o.metadata?.name}: no port named metrics`];
    if (
      ann['prometheus.io/scrape'] !== 'true' ||
      ann['prometheus.io/port'] !== String(port.containerPort) ||
      ann['prometheus.io/path'] !== '/metrics'
    ) {
      return [`${o.kind} ${o.metadata?.name}: prometheus.io annotations do not match port ${port.containerPort}`];
    }
    return [];
  });
}

// --- environment variable names -------------------------------------------------------------------------

/** Names an environment read in a source file: env.NAME, a quoted 'NAME', or NAME: as an object key. */
function namesIn(text: string): Set<string> {
  const out = new Set<string>();
  for (const m of text.matchAll(/(?:env\.|['"`]|^\s*)((?:KYBERNATE|TEMPORAL|AWS)_[A-Z0-9_]+)(?=['"`]|\s*:|\b)/gm))
    out.add(m[1]);
  return out;
}
function sourceFiles(dir: string): string[] {
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .flatMap((d) =>
      d.isDirectory()
        ? sourceFiles(path.join(dir, d.name))
        : /\.(ts|js)$/.test(d.name) && !d.name.endsWith('.d.ts')
          ? [path.join(dir, d.name)]
          : [],
    );
}
/** What production code reads, and the Temporal SDK's environment configuration when it is installed. */
function namesRead(): Set<string> {
  const files = ['workers', 'activities', 'common', 'clients', 'workflows'].flatMap((d) =>
    sourceFiles(path.join(ROOT, d)),
  );
  files.push(...sourceFiles(path.dirname(require.resolve('@temporalio/envconfig'))));
  const out = new Set<string>();
  for (const f of files) for (const n of namesIn(fs.readFileSync(f, 'utf8'))) out.add(n);
  return out;
}
/** Read by the NVIDIA container runtime when it sets the container up, not by us. */
const RUNTIME_NAMES = new Set(['NVIDIA_VISIBLE_DEVICES', 'NVIDIA_DRIVER_CAPABILITIES']);

/** Every variable a container gets: its env, the ConfigMaps and Secrets it takes whole, the image's ENV. */
function envNames(objs: Obj[], secrets: Obj[], dockerfile: string): { where: string; name: string; argv: string[] }[] {
  const out: { where: string; name: string; argv: string[] }[] = [];
  const dataKeys = (kind: string, name: string, pool: Obj[]): string[] => {
    const o = pool.find((x) => x.kind === kind && x.metadata?.name === name);
    return o ? Object.keys({ ...(o.data as object | undefined), ...(o.stringData as object | undefined) }) : [];
  };
  for (const o of workloads(objs)) {
    for (const c of containersOf(o)) {
      const where = `${o.kind} ${o.metadata?.name}/${c.name}`;
      const argv = [...(c.command ?? []), ...(c.args ?? [])];
      for (const e of c.env ?? []) out.push({ where, name: e.name, argv });
      for (const f of c.envFrom ?? []) {
        if (f.configMapRef)
          for (const k of dataKeys('ConfigMap', f.configMapRef.name ?? '', objs))
            out.push({ where: `${where} (ConfigMap ${f.configMapRef.name})`, name: k, argv: [] });
        if (f.secretRef)
          for (const k of dataKeys('Secret', f.secretRef.name ?? '', secrets))
            out.push({ where: `${where} (Secret ${f.secretRef.name})`, name: k, argv: [] });
      }
    }
  }
  for (const m of dockerfile.matchAll(/^\s*(?:ENV\s+|\\?\s*)?((?:KYBERNATE|TEMPORAL)_[A-Z0-9_]+)=/gm))
    out.push({ where: 'Dockerfile ENV', name: m[1], argv: [] });
  return out;
}
function envProblems(objs: Obj[], secrets: Obj[], dockerfile: string, read: Set<string>): string[] {
  return envNames(objs, secrets, dockerfile)
    .filter(
      ({ name, argv }) => !read.has(name) && !RUNTIME_NAMES.has(name) && !argv.some((a) => a.includes(`$(${name})`)),
    )
    .map(({ where, name }) => `${where}: ${name} is read by nothing`);
}

const dockerfile = fs.readFileSync(DOCKERFILE, 'utf8');
const secretExamples = byFile.get(SECRET_EXAMPLE) ?? [];
const agent = find(applied, 'DaemonSet', 'kybernate-agent');
const control = find(applied, 'Deployment', 'kybernate-control');

describe('deploy/kubernetes', () => {
  test('every manifest parses and every object passes its Kubernetes API schema', () => {
    expect(manifestFiles.length).toBeGreaterThanOrEqual(6);
    expect(all.map(schemaProblems).flat()).toEqual([]);
  });

  test('the kustomization applies every manifest but the secret example, and each file exists', () => {
    expect(kustomization.kind).toBe('Kustomization');
    expect([...kustomization.resources].sort()).toEqual(manifestFiles.filter((f) => f !== SECRET_EXAMPLE));
    expect(kustomization.resources.filter((f) => !fs.existsSync(path.join(K8S, f)))).toEqual([]);
  });

  test('the agent is privileged, in the host PID, network and IPC namespaces, named for its node, on host disks', () => {
    expect(agentProblems(agent)).toEqual([]);
  });

  test('every container requests CPU and memory', () => expect(requestProblems(applied)).toEqual([]));
  test('every container runs the same image, at the tag the kustomization pins', () =>
    expect(imageProblems(applied, kustomization)).toEqual([]));
  test('no secret value is inline in a workload, ConfigMap or applied manifest', () =>
    expect(secretProblems(applied, kustomization.resources)).toEqual([]));
  test('each worker exposes a metrics port that its Prometheus annotations name', () =>
    expect(metricsProblems(applied)).toEqual([]));

  test('the image copies the agent entrypoint and the CLI the manifests run', () => {
    const entry = containersOf(agent)[0].command ?? [];
    expect(dockerfile).toContain(`COPY deploy/image/enter-host-cgroupns.sh ${entry[0]}`);
    expect(fs.statSync(path.join(ROOT, 'deploy', 'image', 'enter-host-cgroupns.sh')).mode & 0o111).not.toBe(0);
    for (const w of [agent, control]) {
      const argv = containersOf(w)[0].command ?? [];
      const cli = argv[argv.indexOf('node') + 1];
      expect(cli).toBe('/opt/kybernate/dist/clients/cli.js');
    }
    expect(dockerfile).toMatch(/^WORKDIR \/opt\/kybernate$/m);
    expect(dockerfile).toContain('COPY --from=build /src/dist ./dist');
    expect(fs.existsSync(path.join(ROOT, 'clients', 'cli.ts'))).toBe(true);
  });

  test('the agent entrypoint moves the agent into the host cgroup namespace, and is a no-op there', () => {
    const script = path.join(ROOT, 'deploy', 'image', 'enter-host-cgroupns.sh');
    const ours = fs.readlinkSync('/proc/self/ns/cgroup');
    // A process of this test stands in for the host's init (pid 1 of a pod with hostPID).
    const host = spawn('sleep', ['60'], { stdio: 'ignore' });
    try {
      const env = { ...process.env, KYBERNATE_HOST_NS_PID: String(host.pid) };
      const run = (argv: string[]): string => execFileSync(argv[0], argv.slice(1), { env, encoding: 'utf8' }).trim();
      // Started in a cgroup namespace of its own, as containerd starts a pod on a cgroup v2 node.
      expect(run(['unshare', '--cgroup', 'readlink', '/proc/self/ns/cgroup'])).not.toBe(ours);
      expect(run(['unshare', '--cgroup', 'sh', script, 'readlink', '/proc/self/ns/cgroup'])).toBe(ours);
      expect(run(['sh', script, 'readlink', '/proc/self/ns/cgroup'])).toBe(ours);
    } finally {
      host.kill('SIGKILL');
    }
  });

  test("README's Kubernetes section names every search attribute a namespace must register", () => {
    const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    const section = readme.slice(
      readme.indexOf('## Deploying on Kubernetes'),
      readme.indexOf('\n## ', readme.indexOf('## Deploying on Kubernetes') + 1),
    );
    expect(section.length).toBeGreaterThan(100);
    expect(ALL_SEARCH_ATTRIBUTES.map((k) => k.name).filter((n) => !section.includes(`\`${n}\``))).toEqual([]);
  });

  test('every environment variable given is read by Kybernate, the Temporal SDK or the NVIDIA runtime', () => {
    expect(envProblems(applied, secretExamples, dockerfile, namesRead())).toEqual([]);
  });
});

describe('the checks above fail on broken manifests', () => {
  test('the schema rejects a wrong type and a missing required field', () => {
    const wrongType = clone(agent);
    (podSpec(wrongType) as { hostPID: unknown }).hostPID = 'yes';
    expect(schemaProblems(wrongType).join()).toMatch(/hostPID must be boolean/);
    const noSelector = clone(control);
    delete (noSelector.spec as { selector?: unknown }).selector;
    expect(schemaProblems(noSelector).join()).toMatch(/selector/);
    expect(schemaProblems({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'x' } })).toEqual([
      'Pod x: no validator for v1/Pod',
    ]);
  });

  test('an unprivileged agent outside the host PID and network namespaces, on container disk, is refused', () => {
    const broken = clone(agent);
    const spec = podSpec(broken);
    spec.hostPID = false;
    spec.hostNetwork = false;
    spec.containers[0].securityContext = { privileged: false };
    spec.volumes = (spec.volumes ?? []).map((v) => (v.name === 'data' ? { name: 'data', emptyDir: {} } : v));
    expect(agentProblems(broken)).toEqual([
      'hostPID is not true',
      "workloads would live in the pod's network or IPC namespace",
      'agent container is not privileged',
      '--data-dir is not a hostPath mount',
    ]);
  });

  test('a container without requests, a stray tag, an inline secret, a misnamed metrics port are refused', () => {
    const broken = clone(control);
    const c = podSpec(broken).containers[0];
    delete c.resources;
    c.image = `${IMAGE}:latest`;
    c.env = [{ name: 'KYBERNATE_S3_SECRET_ACCESS_KEY', value: 'inline' }];
    c.ports = [{ name: 'http', containerPort: 9465 }];
    expect(requestProblems([broken])).toHaveLength(1);
    expect(imageProblems([broken], { ...kustomization, images: [{ name: IMAGE, newTag: 'latest' }] })).toHaveLength(2);
    expect(secretProblems([broken], [...kustomization.resources, SECRET_EXAMPLE])).toEqual([
      `kustomization applies ${SECRET_EXAMPLE}`,
      'Deployment kybernate-control/control: KYBERNATE_S3_SECRET_ACCESS_KEY not from a Secret',
    ]);
    expect(metricsProblems([broken])).toEqual(['Deployment kybernate-control: no port named metrics']);
  });

  test('a variable nothing reads is refused', () => {
    const broken = clone(control);
    podSpec(broken).containers[0].env = [{ name: 'KYBERNATE_S3_BUKET', value: 'typo' }];
    expect(envProblems([broken], [], '', namesRead())).toEqual([
      'Deployment kybernate-control/control: KYBERNATE_S3_BUKET is read by nothing',
    ]);
  });
});
