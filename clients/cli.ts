#!/usr/bin/env node
import * as fs from 'node:fs';
import * as path from 'node:path';
import { WorkflowNotFoundError } from '@temporalio/client';
import { Command, CommanderError, Option } from 'commander';
import { assertPid, assertSafeId, InvalidInputError, printable, printableJson } from '../common/ids';
import type { Tier } from '../common/checkpoint';
import { down, parseDownMs, parseStackComponent, restartComponent, startComponent, status, stopComponent, up } from '../deploy/local/stack';
import { defaultStackHome } from '../deploy/local/paths';
import { proxiedLinks, setFault } from '../deploy/local/faults';
import type { Readiness } from '../common/readiness';
import { type JobStatus, jobWorkflowId } from '../common/job';
import { readS3Checkpoint } from '../activities/catalogue';
import { startAgent, startControlWorker } from '../deploy/local/workers';
import { runAgent } from '../workers/agent';
import { loadConfig } from '../workers/config';
import { runControlWorker } from '../workers/control';
import { KybernateClient } from './api';
import { formatBytes, parseBytes } from './bytes';
import { parseDuration, parseSeconds } from './durations';
import { describeError, printableCommanderOutput } from './errors';
import { finalStatus } from './outcome';
import { applyJobs, parseJobsFile } from './apply';
import { parseUser, jobSpecFromFields } from './job-flags';
import { describeJob, formatAge, jobsTable } from './job-format';
import { consoleSink, showLogs } from './job-logs';
import { JobExistsError, JobsApi } from './jobs';

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

/** Whether `job/<job>` is open (a job workflow runs it). */
async function jobIsOpen(k: KybernateClient, job: string): Promise<boolean> {
  try {
    const d = await k.withinTemporal(() => k.client.workflow.getHandle(jobWorkflowId(job)).describe());
    return d.status.name === 'RUNNING';
  } catch (e) {
    if (e instanceof WorkflowNotFoundError) return false;
    throw e;
  }
}

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
      if (o.reason === 'preemption' && !/^[0-9]+$/.test(target) && (await jobIsOpen(k, target))) {
        // The job workflow preempts its own run: it checkpoints it, requeues it and resumes it from that checkpoint.
        if (o.id !== undefined) throw new InvalidInputError('id', `job ${target} is run by a job workflow, which names its preemption checkpoint: leave --id out`);
        if (o.leaveRunning) throw new InvalidInputError('leave-running', `a preemption stops job ${target}: leave --leave-running out`);
        const r = await new JobsApi(k).preempt(target);
        console.log(printable(`${target} has a job workflow: preempted through it: ${r.outcome} (checkpoint ${r.checkpointId})${r.message ? ` — ${r.message}` : ''}`));
        if (r.outcome !== 'requeued') process.exitCode = 1;
        return;
      }
      const { workflowId, request } = await k.startCheckpoint({ target, node: o.node, leaveRunning: o.leaveRunning, reason: o.reason, checkpointId: o.id, vramBytes });
      console.log(`checkpoint ${request.checkpointId} started: ${k.uiLink(workflowId) ?? workflowId}`);
      if (!o.wait) return;
      const r = await k.checkpointResult(request.checkpointId);
      console.log(printable(`${r.checkpointId}: ${r.phase}${r.tier ? ` (tier ${r.tier})` : ''}${r.failureReason ? ` — ${r.failureReason}` : ''}`));
      if (r.phase === 'Failed') process.exitCode = 1;
    });
  });

interface JobFlags extends ReadyFlags {
  node?: string; user?: string; vram?: string; cpu?: string; memory?: string; pids?: string; timeout?: string; priority?: string; tier?: string;
  restartPolicy?: string; maxRestarts?: string; backoffInitial?: string; backoffCap?: string; backoffReset?: string; checkpointEvery?: string; keep?: string;
  wait?: boolean;
}

program
  .command('run <job>')
  .description('start a job: its command runs on a node (--node, else placed by free VRAM) under limits, restarted with CrashLoopBackOff; it runs in this directory')
  .option('--node <name>', 'run on this node only (default: a node with enough free VRAM)')
  .option('--vram <size>', 'VRAM the job needs, e.g. 8GiB (default: none)')
  .option('--cpu <cores>', 'CPU limit in cores: 2, 0.5 or 500m')
  .option('--memory <size>', 'memory limit, e.g. 4GiB (over it the run is OOMKilled)')
  .option('--pids <n>', 'most processes and threads at once')
  .option('--timeout <duration>', 'wall-clock limit from the first start, e.g. 2h (then TimedOut, everything it started killed)')
  .option('--priority <n>', 'priority 0 (lowest) to 10', '0')
  .option('--tier <tier>', 'critical (restored from its last good checkpoint elsewhere past its restart limit) or normal', 'normal')
  .option('--restart-policy <policy>', 'Always, OnFailure or Never', 'Always')
  .option('--max-restarts <n>', 'restarts before the job is quarantined', '10')
  .option('--backoff-initial <duration>', 'first restart delay, doubling after each failed run', '10s')
  .option('--backoff-cap <duration>', 'longest restart delay', '5m')
  .option('--backoff-reset <duration>', 'a run that stayed up this long resets the delay', '10m')
  .option('--checkpoint-every <duration>', 'take a checkpoint this often (leave-running), e.g. 30m')
  .option('--keep <n>', 'with --checkpoint-every: keep the newest n periodic checkpoints')
  .option('--user <uid[:gid]>', 'run as this numeric user (and group; default: the user\'s primary group on the node)')
  .option('--ready-tcp <port>', 'a run counts as started once a TCP connect to 127.0.0.1:<port> succeeds')
  .option('--ready-exec <command>', "a run counts as started once '<command>' (run by sh -c on the node) exits 0")
  .option('--wait', 'wait until the job runs (or stops trying) and print its state')
  .argument('<command...>', 'command and arguments (after --)')
  .action(async (job: string, command: string[], o: JobFlags) => {
    // Every field is checked before connecting: a usage error exits 2 having started nothing.
    const spec = jobSpecFromFields({
      jobId: job, command, cwd: process.cwd(), node: o.node, user: o.user, vram: o.vram, cpu: o.cpu, memory: o.memory, pids: o.pids, timeout: o.timeout,
      priority: o.priority, tier: o.tier, restartPolicy: o.restartPolicy, maxRestarts: o.maxRestarts, backoffInitial: o.backoffInitial,
      backoffCap: o.backoffCap, backoffReset: o.backoffReset, checkpointEvery: o.checkpointEvery, keep: o.keep, readiness: readinessFlags(o),
    });
    await withClient(async (k) => {
      const jobs = new JobsApi(k);
      const { workflowId } = await jobs.start(spec);
      console.log(printable(`job ${spec.jobId} started: ${k.uiLink(workflowId) ?? workflowId}`));
      if (!o.wait) return;
      const s = await waitUntilStarted(jobs, spec.jobId);
      console.log(printable(`${s.jobId}: ${s.state}${s.node ? ` on ${s.node}` : ''}${s.reason ? ` — ${s.reason}` : ''}`));
      if (s.state !== 'Running' && s.state !== 'Succeeded') process.exitCode = 1;
    });
  });

/** Polls the job until it has left Pending: Running, or a state that says why not. */
async function waitUntilStarted(jobs: JobsApi, jobId: string): Promise<JobStatus> {
  for (;;) {
    const s = await jobs.status(jobId);
    if (s.state !== 'Pending') return s;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

program
  .command('workload <job>')
  .description('start a bare workload on a node through its agent, without a job (no limits, no restarts; detached: it outlives the agent); it runs in this directory')
  .requiredOption('--node <name>', 'node to run on')
  .option('--user <uid[:gid]>', 'run as this numeric user (and group; default: the user\'s primary group on the node)')
  .argument('<command...>', 'command and arguments (after --)')
  .action(async (job: string, command: string[], o: { node: string; user?: string }) => {
    assertSafeId('job', job);
    assertSafeId('node', o.node);
    const user = o.user === undefined ? undefined : parseUser('user', o.user);
    await withClient(async (k) => {
      const info = await k.runWorkload({ node: o.node, jobId: job, command, cwd: process.cwd(), user });
      console.log(printable(`job ${info.jobId} running on ${o.node} as pid ${info.pid}; output ${info.logFile}`));
    });
  });

program
  .command('jobs')
  .description('every job, like kubectl get pods: NAME STATUS RESTARTS NODE AGE NEXT-RETRY')
  .action(async () => {
    await withClient(async (k) => {
      const rows = await new JobsApi(k).list();
      console.log(rows.length === 0 ? 'no jobs' : jobsTable(rows, Date.now()));
    });
  });

program
  .command('preempt <job>')
  .description('checkpoint a running job and requeue it: it resumes from that checkpoint where it is placed next')
  .action(async (job: string) => {
    assertSafeId('job', job);
    await withClient(async (k) => {
      const r = await new JobsApi(k).preempt(job);
      console.log(printable(`${job}: ${r.outcome} (checkpoint ${r.checkpointId})${r.message ? ` — ${r.message}` : ''}`));
      if (r.outcome !== 'requeued') process.exitCode = 1;
    });
  });

program
  .command('release <job>')
  .description('lift a quarantine: start the job again from scratch, or from its last good checkpoint')
  .option('--from-checkpoint', 'resume from the last good checkpoint instead of from scratch')
  .action(async (job: string, o: { fromCheckpoint?: boolean }) => {
    assertSafeId('job', job);
    await withClient(async (k) => {
      const s = await new JobsApi(k).release(job, { fromCheckpoint: o.fromCheckpoint });
      console.log(printable(`${job} released${o.fromCheckpoint ? ' from its last good checkpoint' : ''}: ${s.state}${s.reason ? ` — ${s.reason}` : ''}`));
    });
  });

program
  .command('cancel <job>')
  .description('stop a job for good: its run stopped (SIGTERM, then SIGKILL after 30 s) and cleaned up; the job ends Failed, reason Cancelled')
  .option('--no-wait', 'return once the cancel is asked for')
  .action(async (job: string, o: { wait: boolean }) => {
    assertSafeId('job', job);
    await withClient(async (k) => {
      const jobs = new JobsApi(k);
      if (!o.wait) {
        await k.client.workflow.getHandle(jobWorkflowId(job)).cancel();
        console.log(`${job}: cancel asked for`);
        return;
      }
      const closed = await jobs.cancel(job);
      const s = await jobs.status(job).catch(() => null);
      console.log(printable(closed ? `${job}: cancelled${s ? ` (${s.state}${s.reason ? `, ${s.reason}` : ''})` : ''}` : `${job}: cancel asked for; still cleaning up (an agent may be away)`));
    });
  });

program
  .command('logs <job>')
  .description("a job's output: the current run's (stdout to stdout, stderr to stderr, in order)")
  .option('-p, --previous', 'the run before the current one')
  .option('-f, --follow', 'keep printing while the job runs, run after run, until it ends')
  .option('--timestamps', 'prefix each line with its time')
  .action(async (job: string, o: { previous?: boolean; follow?: boolean; timestamps?: boolean }) => {
    assertSafeId('job', job);
    if (o.previous && o.follow) throw new InvalidInputError('follow', 'cannot follow the previous run: it has ended');
    await withClient((k) => showLogs(new JobsApi(k), job, o, consoleSink(Boolean(o.timestamps))));
  });

program
  .command('apply')
  .description('start the jobs of a YAML file (jobs: [{ name, command, node, vram, ... }]), each on its own; prints what was applied and what failed')
  .requiredOption('-f, --file <file>', 'the jobs file')
  .action(async (o: { file: string }) => {
    let text: string;
    try {
      text = fs.readFileSync(o.file, 'utf8');
    } catch (e) {
      throw new InvalidInputError('file', `cannot read ${o.file}: ${(e as Error).message}`);
    }
    // A file that is not a list of jobs is refused before anything starts; a bad entry fails alone.
    const entries = parseJobsFile(text, o.file);
    await withClient(async (k) => {
      const outcomes = await applyJobs(
        new JobsApi(k), entries,
        (e) => (e instanceof JobExistsError ? { spec: e.existing?.spec ?? null, state: e.existing?.state ?? 'unknown' } : null),
        (e) => describeError(e).message,
      );
      for (const r of outcomes) console.log(printable(`${r.name ?? `jobs[${r.index}]`}: ${r.result}: ${r.detail}`));
      const count = (w: string): number => outcomes.filter((r) => r.result === w).length;
      console.log(`${outcomes.length} jobs: ${count('applied')} applied, ${count('unchanged')} unchanged, ${count('failed')} failed`);
      if (count('failed') > 0) process.exitCode = 1;
    });
  });

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
      const now = Date.now();
      for (const r of rows) {
        // A job's checkpoints (a handful) also show their size, from metadata.json in S3, and their age.
        const extra = o.job === undefined ? '' : ` size ${(await checkpointSize(k, r.checkpointId, r.tier)).padEnd(10)} age ${formatAge(now - Date.parse(r.startedAt))}`;
        console.log(printable(`${r.checkpointId.padEnd(36)} job ${r.jobId.padEnd(16)} node ${r.node.padEnd(10)} ${r.phase.padEnd(14)} tier ${(r.tier || '-').padEnd(5)}${extra}`));
      }
    });
  });

/** The bytes of a checkpoint in S3 (its files, as metadata.json lists them); '-' when it is not there (yet). */
async function checkpointSize(k: KybernateClient, checkpointId: string, tier: string): Promise<string> {
  if (tier !== 's3') return '-';
  const found = await readS3Checkpoint(k.config.s3, checkpointId).catch(() => null);
  return found ? formatBytes(found.metadata.files.reduce((n, f) => n + f.size, 0)) : '-';
}

program
  .command('describe <checkpoint-or-kind> [name]')
  .description("a checkpoint's phase, tier and the history of its attempts; 'describe job <job>': a job's spec, state, runs, events and checkpoints")
  .action(async (target: string, name: string | undefined) => {
    if (name !== undefined) {
      // `describe job <name>`; a checkpoint is described by its id alone.
      if (target !== 'job') throw new InvalidInputError('kind', `expected 'describe job <job>' or 'describe <checkpoint>' (got '${target}' '${name}')`);
      assertSafeId('job', name);
      await withClient(async (k) => {
        console.log(describeJob(await new JobsApi(k).status(name), Date.now()));
      });
      return;
    }
    assertSafeId('checkpoint', target);
    await withClient(async (k) => {
      const s = await k.describeCheckpoint(target);
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
      const r = await finalStatus('migrate', k.client.workflow.getHandle(workflowId));
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
