#!/usr/bin/env node
import * as path from 'node:path';
import { Command, CommanderError, Option } from 'commander';
import { assertPid, assertSafeId, InvalidInputError, printable, printableJson } from '../common/ids';
import type { Tier } from '../common/checkpoint';
import { down, parseDownMs, parseStackComponent, restartComponent, startComponent, status, stopComponent, up } from '../deploy/local/stack';
import { defaultStackHome } from '../deploy/local/paths';
import { proxiedLinks, setFault } from '../deploy/local/faults';
import type { Readiness } from '../common/readiness';
import { startAgent, startControlWorker } from '../deploy/local/workers';
import { runAgent } from '../workers/agent';
import { loadConfig } from '../workers/config';
import { runControlWorker } from '../workers/control';
import { KybernateClient } from './api';
import { formatBytes, parseBytes } from './bytes';
import { parseDuration, parseSeconds } from './durations';
import { describeError, printableCommanderOutput } from './errors';

const program = new Command();
program.name('kybernate').description('Checkpoint and restore running GPU workloads, orchestrated by Temporal').showHelpAfterError()
  // Commander's own usage errors are thrown rather than exiting 1, so that every usage error exits 2 (see the
  // handler at the end); what it prints echoes the command line, so control characters are escaped.
  .exitOverride()
  .configureOutput({ outputError: (text, write) => write(printableCommanderOutput(text)) });

async function withClient<T>(fn: (k: KybernateClient) => Promise<T>): Promise<T> {
  const k = await KybernateClient.connect(loadConfig());
  try {
    return await fn(k);
  } finally {
    await k.close();
  }
}

program
  .command('up')
  .description('start the local stack (Temporal with UI, MinIO) and our workers: a control worker and one agent per node')
  .option('--nodes <names>', 'comma-separated node agents to start', 'node-a,node-b')
  .option('--declared-vram <size>', 'VRAM each node declares (no GPU here): reported as declared, never as measured', '16GiB')
  .option('--no-workers', 'start only Temporal and MinIO')
  .option('--toxiproxy', "also start toxiproxy, and route the workers' S3 through its proxy 's3' (see 'kybernate fault')")
  .option('--proxy-temporal', "with --toxiproxy: route the workers' Temporal connection through the proxy 'temporal' too")
  .action(async (o: { nodes: string; declaredVram: string; workers: boolean; toxiproxy?: boolean; proxyTemporal?: boolean }) => {
    const nodes = o.nodes.split(',').filter(Boolean).map((n) => assertSafeId('nodes', n.trim()));
    const declared = parseBytes('declared-vram', o.declaredVram);
    const state = await up({ toxiproxy: o.toxiproxy, proxies: proxiedLinks(o) });
    if (o.workers) {
      // On a stack that was already up: what runs is left alone, what died is started again as it was.
      const known = (c: string): boolean => state.processes.some((p) => p.component === c);
      if (known('control-worker')) await startComponent(state.home, 'control-worker');
      else await startControlWorker(state);
      for (const node of nodes) {
        if (known(`agent:${node}`)) await startComponent(state.home, `agent:${node}`);
        else await startAgent(state, { node, declaredVramBytes: declared });
      }
    }
    console.log(`Temporal UI: ${state.temporal.uiUrl}\nTemporal:    ${state.temporal.address}\nS3 (MinIO):  ${state.s3.endpoint} bucket ${state.s3.bucket}\nLogs:        ${state.home}/logs`);
  });

program.command('down').description('stop the local stack and every worker and agent it started').action(async () => {
  await down();
});

program
  .command('restart <component>')
  .description('stop one component and start it again, the rest of the stack untouched: temporal, minio, toxiproxy (same port, same data), worker, agent:<node>')
  .addOption(new Option('--signal <signal>', 'how to stop it: SIGKILL (a crash) or SIGTERM (a clean shutdown)').choices(['SIGKILL', 'SIGTERM']).default('SIGTERM'))
  .option('--down <ms>', 'stay down this long before starting again (an outage)', '0')
  .option('--stop-only', 'stop it and leave it stopped (start it again with --start-only)')
  .option('--start-only', 'start a stopped component again')
  .action(async (name: string, o: { signal: 'SIGKILL' | 'SIGTERM'; down: string; stopOnly?: boolean; startOnly?: boolean }) => {
    const component = parseStackComponent(name);
    const downMs = parseDownMs(o.down);
    const home = defaultStackHome();
    if (o.stopOnly) {
      const rec = await stopComponent(home, component, { signal: o.signal });
      console.log(`${component} stopped (was pid ${rec.pid}); 'kybernate restart ${name} --start-only' starts it again`);
      return;
    }
    const rec = o.startOnly ? await startComponent(home, component) : await restartComponent(home, component, { signal: o.signal, downMs });
    console.log(`${component} running as pid ${rec.pid}; log ${rec.log}`);
  });

program
  .command('fault <link> <action> [value]')
  .description("cut, restore or slow a link that 'up --toxiproxy' routed through a proxy: s3 or temporal; down | up | latency <ms> | bandwidth <KB/s> | reset")
  .action(async (link: string, action: string, value: string | undefined) => {
    console.log(await setFault(defaultStackHome(), link, action, value));
  });

program.command('status').description("each component's health and the Temporal UI URL").action(async () => {
  const s = await status();
  if (!s.state) {
    console.log("no local stack is running (start one with 'kybernate up')");
    process.exitCode = 1;
    return;
  }
  for (const c of s.components) console.log(`${c.healthy ? 'healthy  ' : 'UNHEALTHY'} ${c.component.padEnd(16)} pid ${String(c.pid ?? '-').padEnd(8)} ${c.detail}`);
  console.log(`Temporal UI: ${s.state.temporal.uiUrl}`);
  if (s.components.some((c) => !c.healthy)) process.exitCode = 1;
});

program
  .command('agent')
  .description('run the node agent: a worker on queue node/<name> that runs only node activities')
  .requiredOption('--node <name>', 'this node\'s name')
  .option('--zone <zone>', 'failure zone')
  .option('--data-dir <dir>', 'where checkpoints (the NVMe tier) and workload logs live')
  .option('--declared-vram <size>', 'VRAM capacity to report on a node without a GPU (shown as declared)')
  .option('--staging-dir <dir>', "memory (tmpfs) directory where dumps and fetches are staged when they fit, or 'none' (default: /dev/shm/kybernate/<node>)")
  .option('--report-interval <seconds>', 'how often to report inventory to the node registry', '30')
  .action(async (o: { node: string; zone?: string; dataDir?: string; declaredVram?: string; stagingDir?: string; reportInterval: string }) => {
    const reportEveryMs = parseSeconds('report-interval', o.reportInterval);
    const node = assertSafeId('node', o.node);
    const zone = o.zone === undefined ? undefined : assertSafeId('zone', o.zone);
    const declaredVramBytes = o.declaredVram ? parseBytes('declared-vram', o.declaredVram) : undefined;
    await runAgent({
      node, zone, dataDir: o.dataDir, declaredVramBytes, reportEveryMs,
      stagingDir: o.stagingDir === 'none' ? null : o.stagingDir ? path.resolve(o.stagingDir) : undefined,
    });
  });

program.command('worker').description('run the control-plane worker (all workflows, control activities)').action(runControlWorker);

program
  .command('checkpoint <job-or-pid>')
  .description('checkpoint a workload: CUDA lock/checkpoint, CRIU dump, seal, upload to S3')
  .requiredOption('--node <name>', 'node the workload runs on')
  .option('--leave-running', 'let the workload run on after the dump')
  .addOption(new Option('--reason <reason>', 'why').choices(['manual', 'preemption']).default('manual'))
  .option('--id <checkpointId>', 'checkpoint id (default: <job>-<time>)')
  .option('--vram <size>', 'VRAM the job needs when restored (default: none, a CPU-only process)')
  .option('--no-wait', 'return once started')
  .action(async (target: string, o: { node: string; leaveRunning?: boolean; reason: 'manual' | 'preemption'; id?: string; vram?: string; wait: boolean }) => {
    // Everything that can be checked offline is, before connecting: a usage error exits 2 having touched nothing.
    if (/^[0-9]+$/.test(target)) assertPid('pid', target);
    else assertSafeId('job', target);
    assertSafeId('node', o.node);
    if (o.id !== undefined) assertSafeId('checkpointId', o.id);
    const vramBytes = o.vram !== undefined ? parseBytes('vram', o.vram) : undefined;
    await withClient(async (k) => {
      const { workflowId, request } = await k.startCheckpoint({ target, node: o.node, leaveRunning: o.leaveRunning, reason: o.reason, checkpointId: o.id, vramBytes });
      console.log(`checkpoint ${request.checkpointId} started: ${k.uiLink(workflowId) ?? workflowId}`);
      if (!o.wait) return;
      const r = await k.checkpointResult(request.checkpointId);
      console.log(printable(`${r.checkpointId}: ${r.phase}${r.tier ? ` (tier ${r.tier})` : ''}${r.failureReason ? ` — ${r.failureReason}` : ''}`));
      if (r.phase === 'Failed') process.exitCode = 1;
    });
  });

program
  .command('run <job>')
  .description('start a workload on a node through its agent (detached: it outlives the agent); it runs in this directory')
  .requiredOption('--node <name>', 'node to run on')
  .option('--user <uid[:gid]>', 'run as this numeric user (and group; default: the user\'s primary group on the node)')
  .argument('<command...>', 'command and arguments (after --)')
  .action(async (job: string, command: string[], o: { node: string; user?: string }) => {
    assertSafeId('job', job);
    assertSafeId('node', o.node);
    const user = o.user === undefined ? undefined : parseUser(o.user);
    await withClient(async (k) => {
      const info = await k.runWorkload({ node: o.node, jobId: job, command, cwd: process.cwd(), user });
      console.log(printable(`job ${info.jobId} running on ${o.node} as pid ${info.pid}; output ${info.logFile}`));
    });
  });

/** --user 65534 or 65534:65534: numeric only, so that it means the same on every node. */
function parseUser(text: string): { uid: number; gid?: number } {
  const m = /^([0-9]{1,10})(?::([0-9]{1,10}))?$/.exec(text);
  if (!m) throw new InvalidInputError('user', `must be a numeric uid or uid:gid (got '${text}')`);
  const uid = Number(m[1]);
  const gid = m[2] === undefined ? undefined : Number(m[2]);
  for (const [f, v] of [['user', uid], ['user', gid]] as const) {
    if (v !== undefined && v > 4294967294) throw new InvalidInputError(f, `id ${v} is out of range`);
  }
  if (uid === 0) throw new InvalidInputError('user', "must not be 0: leave --user out to run as the agent's user");
  return gid === undefined ? { uid } : { uid, gid };
}

program
  .command('checkpoints')
  .description('list checkpoints')
  .option('--job <job>', 'only this job')
  .addOption(new Option('--tier <tier>', 'only this tier').choices(['s3', 'nvme']))
  .action(async (o: { job?: string; tier?: Tier }) => {
    if (o.job !== undefined) assertSafeId('job', o.job);
    await withClient(async (k) => {
      // Answered by Temporal's visibility store (no worker needed), within a bound.
      const rows = await k.withinTemporal(() => k.listCheckpoints(o));
      if (rows.length === 0) console.log('no checkpoints');
      for (const r of rows) console.log(printable(`${r.checkpointId.padEnd(36)} job ${r.jobId.padEnd(16)} node ${r.node.padEnd(10)} ${r.phase.padEnd(14)} tier ${r.tier || '-'}`));
    });
  });

program
  .command('describe <checkpoint>')
  .description("a checkpoint's phase, tier and the history of its attempts")
  .action(async (id: string) => {
    assertSafeId('checkpoint', id);
    await withClient(async (k) => {
      const s = await k.describeCheckpoint(id);
      console.log(printableJson(JSON.stringify(s, null, 2)));
    });
  });

interface ReadyFlags {
  readyTcp?: string;
  readyExec?: string;
}

/** --ready-tcp / --ready-exec as a readiness probe (validated by the client, which names the field). */
function readinessFlags(o: ReadyFlags): Readiness | undefined {
  if (o.readyTcp !== undefined && o.readyExec !== undefined) throw new InvalidInputError('ready-tcp', 'give --ready-tcp or --ready-exec, not both');
  if (o.readyTcp !== undefined) {
    if (!/^\d+$/.test(o.readyTcp) || Number(o.readyTcp) < 1 || Number(o.readyTcp) > 65535) throw new InvalidInputError('ready-tcp', `expected a port number 1-65535 (got '${o.readyTcp}')`);
    return { tcpSocket: { port: Number(o.readyTcp) } };
  }
  if (o.readyExec !== undefined) return { exec: { command: ['/bin/sh', '-c', o.readyExec] } };
  return undefined;
}

program
  .command('restore <checkpoint>')
  .description('restore a checkpoint on a node with enough free VRAM (preferring one that holds a local copy)')
  .option('--node <name>', 'restore on this node only')
  .option('--placement-deadline <duration>', 'how long to wait for a node that fits, e.g. 90s or 10m', '10m')
  .option('--ready-tcp <port>', 'Running only once a TCP connect to 127.0.0.1:<port> succeeds')
  .option('--ready-exec <command>', "Running only once '<command>' (run by sh -c on the node) exits 0")
  .option('--no-wait', 'return once started')
  .action(async (id: string, o: { node?: string; placementDeadline: string; wait: boolean } & ReadyFlags) => {
    assertSafeId('checkpoint', id);
    if (o.node !== undefined) assertSafeId('node', o.node);
    parseDuration('placement-deadline', o.placementDeadline);
    await withClient(async (k) => {
      const { workflowId } = await k.startRestore({ checkpointId: id, node: o.node, placementDeadline: o.placementDeadline, readiness: readinessFlags(o) });
      console.log(`restore of ${id} started: ${k.uiLink(workflowId) ?? workflowId}`);
      if (!o.wait) return;
      const r = await k.restoreResult(workflowId);
      console.log(printable(`${id}: ${r.phase} on ${r.node} as pid ${r.pid} (from ${r.source}); attempts: ${r.attempts.map((a) => `${a.node}:${a.outcome}`).join(', ')}`));
    });
  });

program
  .command('migrate <job>')
  .description('checkpoint a job on its node and restore it on another, as one workflow')
  .option('--from <node>', 'node the job runs on (default: where it was last started or restored)')
  .requiredOption('--to <node>', 'node to move it to')
  .option('--ready-tcp <port>', 'restored only once a TCP connect to 127.0.0.1:<port> succeeds')
  .option('--ready-exec <command>', "restored only once '<command>' (run by sh -c on the node) exits 0")
  .option('--no-wait', 'return once started')
  .action(async (job: string, o: { from?: string; to: string; wait: boolean } & ReadyFlags) => {
    assertSafeId('job', job);
    if (o.from !== undefined) assertSafeId('from', o.from);
    assertSafeId('to', o.to);
    await withClient(async (k) => {
      const { workflowId } = await k.startMigration({ jobId: job, from: o.from, to: o.to, readiness: readinessFlags(o) });
      console.log(`migration of ${job} started: ${k.uiLink(workflowId) ?? workflowId}`);
      if (!o.wait) return;
      const r = (await k.client.workflow.getHandle(workflowId).result()) as { phase: string; failureReason: string | null };
      console.log(printable(`${job}: ${r.phase}${r.failureReason ? ` — ${r.failureReason}` : ''}`));
      if (r.phase !== 'Migrated') process.exitCode = 1;
    });
  });

program
  .command('nodes')
  .description('registered nodes and their inventory')
  .argument('<node...>')
  .action(async (nodes: string[]) => {
    for (const n of nodes) assertSafeId('node', n);
    await withClient(async (k) => {
      for (const n of nodes) {
        const r = await k.node(n);
        const inv = r.inventory;
        console.log(printable(`${n}: last seen ${r.lastSeen ?? 'never'}; VRAM ${inv ? `${formatBytes(inv.freeVramBytes)} free of ${formatBytes(inv.totalVramBytes)} (${inv.vramSource})` : '-'}; disk ${inv ? formatBytes(inv.freeDiskBytes) : '-'} free; CRIU ${inv?.criuVersion ?? '-'}`));
      }
    });
  });

// Exit codes: 0 done; 1 the operation failed (a workflow failed, a component is down); 2 usage error (commander's
// own, a value out of bounds, a bad id), with nothing started. Commander has printed its own messages already.
program.parseAsync(process.argv).catch((e: unknown) => {
  const { message, exitCode } = describeError(e);
  if (!(e instanceof CommanderError)) console.error(`error: ${message}`);
  process.exit(exitCode);
});
