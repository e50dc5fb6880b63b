#!/usr/bin/env node
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command, CommanderError, Option } from 'commander';
import { assertPid, assertSafeId, InvalidInputError, printable, printableJson } from '../common/ids';
import type { Tier } from '../common/checkpoint';
import type { Readiness } from '../common/readiness';
import { jobWorkflowId, type JobStatus, type RunLogLine } from '../common/job';
import { runAgent } from '../workers/agent';
import { loadConfig, type StartHooks } from '../workers/config';
import { runControlWorker } from '../workers/control';
import { type CheckpointStatus, KybernateClient, type MigrateStatus, type OnStatus, type RestoreStatus } from './index';
import type { AdmissionConfig } from '../common/admission';
import { formatAdmission, requestPriority } from './admission';
import { formatBytes, parseBytes } from './bytes';
import { parseDuration, parseSeconds } from './durations';
import { describeError, printableCommanderOutput } from './errors';
import { applyJobs, parseJobsFile } from './apply';
import { parseUser, jobSpecFromFields } from './job-flags';
import { describeJob, formatAge, jobsTable } from './job-format';
import { nodesTable } from './node-format';
import { consoleSink, type LogSink } from './job-logs';
import { JobExistsError, type JobsApi } from './jobs';
import { parsePreemptionSchedule } from './schedules';
import { checkChunkGcSchedule, chunkGcScheduleText } from './chunk-gc-schedule';
import { scheduleText, schedulesTable } from './schedule-format';
import {
  applyJson,
  type ApplyJson,
  type CancelJson,
  type CheckpointJson,
  type CheckpointsJson,
  type ChunkGcScheduleActionJson,
  type ChunkGcScheduleJson,
  type DescribeJson,
  type DownJson,
  errorJson,
  type FaultJson,
  jobsJson,
  jsonText,
  type LogsJson,
  type MigrateJson,
  type NodesJson,
  type PreemptJson,
  type ReleaseJson,
  type RestartJson,
  type RestoreJson,
  type RunJson,
  type ScheduleActionJson,
  type ScheduleJson,
  type SchedulesJson,
  type StatusJson,
  type AdmissionJson,
  type UpJson,
  type WorkloadJson,
} from './json-output';
import { ProgressDisplay } from './progress';

const program = new Command();
program
  .name('kybernate')
  .description('Checkpoint and restore running GPU workloads, orchestrated by Temporal')
  // With --json, stderr holds only the error document.
  .showHelpAfterError(!jsonRequested())
  // Commander's own usage errors are thrown rather than exiting 1, so that every usage error exits 2 (see the
  // handler at the end); what it prints echoes the command line, so control characters are escaped.
  .exitOverride()
  // With --json the error is printed as a JSON document by the handler at the end instead.
  .configureOutput({
    outputError: (text, write) => {
      if (!jsonRequested()) write(printableCommanderOutput(text));
    },
  });

/** --json among the options (not among a job's command words after `--`). */
function jsonRequested(argv: readonly string[] = process.argv): boolean {
  const end = argv.indexOf('--');
  return (end === -1 ? argv : argv.slice(0, end)).includes('--json');
}

interface JsonFlag {
  json?: boolean;
}
const JSON_HELP =
  'print one JSON document on stdout (errors: {"error":{"code","message"}} on stderr); shapes in README';

const PRIORITY_HELP = 'priority 0 (critical: never refused) to 10 (refused first under load)';

/** --priority as given on the command line: a whole number from 0 to 10 (default 5). */
function parsePriority(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  if (!/^[0-9]+$/.test(text))
    throw new InvalidInputError('priority', `expected a whole number from 0 to 10 (got '${text}')`);
  return requestPriority(Number(text));
}

/** Prints the command's result: its JSON document with --json, else the text lines. */
function emit<T extends object>(o: JsonFlag, doc: T, text: () => string): void {
  console.log(o.json ? jsonText(doc) : text());
}

/**
 * The progress display of a waiting command (stderr; none with --json): a bar when the output is a terminal,
 * a line per phase change otherwise.
 */
function progressFor<S>(label: string, o: JsonFlag): { onStatus: OnStatus<S> | undefined; stop: () => void } {
  if (o.json) return { onStatus: undefined, stop: () => undefined };
  const d = new ProgressDisplay(label, {
    tty: Boolean(process.stdout.isTTY && process.stderr.isTTY),
    stream: process.stderr,
  });
  return { onStatus: (s) => d.update(s), stop: () => d.stop() };
}

/** Waits with a progress display that is stopped however the wait ends. */
async function withProgress<S>(
  label: string,
  o: JsonFlag,
  wait: (onStatus: OnStatus<S> | undefined) => Promise<S>,
): Promise<S> {
  const p = progressFor<S>(label, o);
  try {
    return await wait(p.onStatus);
  } finally {
    p.stop();
  }
}

type LocalStack = typeof import('./local-stack');
/** The local stack's commands; loaded only when one is used, since deploy/local needs a repository checkout. */
const localStack = (): Promise<LocalStack> => import('./local-stack');

/**
 * The local stack's defaults (its Temporal and MinIO, the provisioned binaries) and registration for a worker,
 * agent or client run from a checkout; nothing in a production install, where the environment says it all.
 */
async function localHooks(): Promise<StartHooks> {
  let local: LocalStack;
  try {
    local = await localStack();
  } catch (e) {
    if (/cannot find the kybernate repository/.test((e as Error).message)) return {};
    throw e;
  }
  const d = local.localDefaults();
  return {
    defaults: d.config,
    node: d.node,
    join: local.joinLocalStack,
    // One machine runs several agents of a local stack: each takes a free loopback port for its metrics.
    localMetricsAddress: (address) =>
      local.inLocalStack(address) ? async () => `127.0.0.1:${await local.freePort()}` : null,
  };
}

async function withClient<T>(fn: (k: KybernateClient) => Promise<T>): Promise<T> {
  const k = await KybernateClient.connect(loadConfig(process.env, (await localHooks()).defaults));
  try {
    return await fn(k);
  } finally {
    await k.close();
  }
}

program
  .command('up')
  .description(
    'start the local stack (Temporal with UI, MinIO) and our workers: a control worker and one agent per node',
  )
  .option('--nodes <names>', 'comma-separated node agents to start', 'node-a,node-b')
  .option(
    '--declared-vram <size>',
    'VRAM each node declares (no GPU here): reported as declared, never as measured',
    '16GiB',
  )
  .option('--no-workers', 'start only Temporal and MinIO')
  .option(
    '--toxiproxy',
    "also start toxiproxy, and route the workers' S3 through its proxy 's3' (see 'kybernate fault')",
  )
  .option(
    '--proxy-temporal',
    "with --toxiproxy: route the workers' Temporal connection through the proxy 'temporal' too",
  )
  .option('--json', JSON_HELP)
  .action(
    async (
      o: {
        nodes: string;
        declaredVram: string;
        workers: boolean;
        toxiproxy?: boolean;
        proxyTemporal?: boolean;
      } & JsonFlag,
    ) => {
      const nodes = o.nodes
        .split(',')
        .filter(Boolean)
        .map((n) => assertSafeId('nodes', n.trim()));
      const declared = parseBytes('declared-vram', o.declaredVram);
      const { up, proxiedLinks, startComponent, startControlWorker, startAgent } = await localStack();
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
      emit<UpJson>(
        o,
        {
          temporal: { address: state.temporal.address, uiUrl: state.temporal.uiUrl },
          s3: { endpoint: state.s3.endpoint, bucket: state.s3.bucket },
          logs: `${state.home}/logs`,
        },
        () =>
          `Temporal UI: ${state.temporal.uiUrl}\nTemporal:    ${state.temporal.address}\nS3 (MinIO):  ${state.s3.endpoint} bucket ${state.s3.bucket}\nLogs:        ${state.home}/logs`,
      );
    },
  );

program
  .command('down')
  .description('stop the local stack and every worker and agent it started')
  .option('--json', JSON_HELP)
  .action(async (o: JsonFlag) => {
    await (await localStack()).down();
    if (o.json) emit<DownJson>(o, { stopped: true }, () => '');
  });

program
  .command('restart <component>')
  .description(
    'stop one component and start it again, the rest of the stack untouched: temporal, minio, toxiproxy (same port, same data), worker, agent:<node>',
  )
  .addOption(
    new Option('--signal <signal>', 'how to stop it: SIGKILL (a crash) or SIGTERM (a clean shutdown)')
      .choices(['SIGKILL', 'SIGTERM'])
      .default('SIGTERM'),
  )
  .option('--down <ms>', 'stay down this long before starting again (an outage)', '0')
  .option('--stop-only', 'stop it and leave it stopped (start it again with --start-only)')
  .option('--start-only', 'start a stopped component again')
  .option('--json', JSON_HELP)
  .action(
    async (
      name: string,
      o: { signal: 'SIGKILL' | 'SIGTERM'; down: string; stopOnly?: boolean; startOnly?: boolean } & JsonFlag,
    ) => {
      const { parseStackComponent, parseDownMs, defaultStackHome, stopComponent, startComponent, restartComponent } =
        await localStack();
      const component = parseStackComponent(name);
      const downMs = parseDownMs(o.down);
      const home = defaultStackHome();
      if (o.stopOnly) {
        const rec = await stopComponent(home, component, { signal: o.signal });
        emit<RestartJson>(
          o,
          { component, running: false, pid: rec.pid, log: null },
          () => `${component} stopped (was pid ${rec.pid}); 'kybernate restart ${name} --start-only' starts it again`,
        );
        return;
      }
      const rec = o.startOnly
        ? await startComponent(home, component)
        : await restartComponent(home, component, { signal: o.signal, downMs });
      emit<RestartJson>(
        o,
        { component, running: true, pid: rec.pid, log: rec.log },
        () => `${component} running as pid ${rec.pid}; log ${rec.log}`,
      );
    },
  );

program
  .command('fault <link> <action> [value]')
  .description(
    "cut, restore or slow a link that 'up --toxiproxy' routed through a proxy: s3 or temporal; down | up | latency <ms> | bandwidth <KB/s> | reset",
  )
  .option('--json', JSON_HELP)
  .action(async (link: string, action: string, value: string | undefined, o: JsonFlag) => {
    const { setFault, defaultStackHome } = await localStack();
    const result = await setFault(defaultStackHome(), link, action, value);
    emit<FaultJson>(o, { link, action, value: value ?? null, result }, () => result);
  });

program
  .command('status')
  .description("each component's health and the Temporal UI URL")
  .option('--json', JSON_HELP)
  .action(async (o: JsonFlag) => {
    const s = await (await localStack()).status();
    const state = s.state;
    if (!state) {
      emit<StatusJson>(
        o,
        { running: false, uiUrl: null, components: [] },
        () => "no local stack is running (start one with 'kybernate up')",
      );
      process.exitCode = 1;
      return;
    }
    // Admission lives in a workflow: asked through Temporal, bounded; a stack whose Temporal or worker is down
    // still gets its component lines, with admission's problem in their place.
    const adm = await withClient(async (k) => ({ status: await k.admissionStatus(), problem: null })).catch(
      (e: unknown) => ({ status: null, problem: describeError(e).message }),
    );
    emit<StatusJson>(
      o,
      {
        running: true,
        uiUrl: state.temporal.uiUrl,
        components: s.components,
        admission: adm.status,
        admissionProblem: adm.problem,
      },
      () =>
        [
          ...s.components.map(
            (c) =>
              `${c.healthy ? 'healthy  ' : 'UNHEALTHY'} ${c.component.padEnd(16)} pid ${String(c.pid ?? '-').padEnd(8)} ${c.detail}`,
          ),
          // Both printable already: describeError escapes, and admission's lines hold only numbers and its own words.
          adm.problem ? `admission: unknown (${adm.problem})` : formatAdmission(adm.status),
          `Temporal UI: ${state.temporal.uiUrl}`,
        ].join('\n'),
    );
    if (s.components.some((c) => !c.healthy)) process.exitCode = 1;
  });

program
  .command('admission')
  .description(
    "admission's state, and with options its settings: the backlog limit (priority 10 refused at it), the marks of Degraded mode",
  )
  .option('--backlog-limit <n>', 'backlog at which priority-10 requests are refused (default 1000)')
  .option('--degraded-backlog <n>', 'backlog above which the control plane is Degraded (default 2000)')
  .option('--degraded-latency-ms <ms>', 'probe latency above which the control plane is Degraded (default 5000)')
  .option('--probe-interval-ms <ms>', 'how often admission probes the control plane (default 10000)')
  .option('--calm-probes <n>', 'calm probes in a row before Degraded ends (default 3)')
  .option('--json', JSON_HELP)
  .action(
    async (
      o: {
        backlogLimit?: string;
        degradedBacklog?: string;
        degradedLatencyMs?: string;
        probeIntervalMs?: string;
        calmProbes?: string;
      } & JsonFlag,
    ) => {
      const patch: Partial<AdmissionConfig> = {};
      const fields = [
        ['backlogLimit', 'backlog-limit'],
        ['degradedBacklog', 'degraded-backlog'],
        ['degradedLatencyMs', 'degraded-latency-ms'],
        ['probeIntervalMs', 'probe-interval-ms'],
        ['calmProbes', 'calm-probes'],
      ] as const;
      for (const [key, flag] of fields) {
        const v = o[key];
        if (v === undefined) continue;
        if (!/^[0-9]+$/.test(v)) throw new InvalidInputError(flag, `expected a whole number (got '${v}')`);
        patch[key] = Number(v);
      }
      await withClient(async (k) => {
        const s = Object.keys(patch).length > 0 ? await k.configureAdmission(patch) : await k.admissionStatus();
        emit<AdmissionJson>(o, { admission: s }, () => formatAdmission(s));
      });
    },
  );

program
  .command('agent')
  .description('run the node agent: a worker on queue node/<name> that runs only node activities')
  .requiredOption('--node <name>', "this node's name")
  .option('--zone <zone>', 'failure zone')
  .option('--data-dir <dir>', 'where checkpoints (the NVMe tier) and workload logs live')
  .option('--declared-vram <size>', 'VRAM capacity to report on a node without a GPU (shown as declared)')
  .option(
    '--staging-dir <dir>',
    "memory (tmpfs) directory where dumps and fetches are staged when they fit, or 'none' (default: /dev/shm/kybernate/<node>)",
  )
  .option('--report-interval <seconds>', 'how often to report inventory to the node registry', '30')
  .action(
    async (o: {
      node: string;
      zone?: string;
      dataDir?: string;
      declaredVram?: string;
      stagingDir?: string;
      reportInterval: string;
    }) => {
      const reportEveryMs = parseSeconds('report-interval', o.reportInterval);
      const node = assertSafeId('node', o.node);
      const zone = o.zone === undefined ? undefined : assertSafeId('zone', o.zone);
      const declaredVramBytes = o.declaredVram ? parseBytes('declared-vram', o.declaredVram) : undefined;
      await runAgent(
        {
          node,
          zone,
          dataDir: o.dataDir,
          declaredVramBytes,
          reportEveryMs,
          stagingDir: o.stagingDir === 'none' ? null : o.stagingDir ? path.resolve(o.stagingDir) : undefined,
        },
        await localHooks(),
      );
    },
  );

program
  .command('worker')
  .description('run the control-plane worker (all workflows, control activities)')
  .action(async () => runControlWorker(await localHooks()));

program
  .command('checkpoint <job-or-pid>')
  .description('checkpoint a workload: CUDA lock/checkpoint, CRIU dump, seal, upload to S3')
  .requiredOption('--node <name>', 'node the workload runs on')
  .option('--leave-running', 'let the workload run on after the dump (always, for a job run by a job workflow)')
  .addOption(new Option('--reason <reason>', 'why').choices(['manual', 'preemption']).default('manual'))
  .option('--id <checkpointId>', 'checkpoint id (default: <job>-<time>)')
  .option('--vram <size>', 'VRAM the job needs when restored (default: none, a CPU-only process)')
  .option('--priority <n>', PRIORITY_HELP, '5')
  .option('--no-wait', 'return once started')
  .option('--json', JSON_HELP)
  .action(
    async (
      target: string,
      o: {
        node: string;
        leaveRunning?: boolean;
        reason: 'manual' | 'preemption';
        id?: string;
        vram?: string;
        priority?: string;
        wait: boolean;
      } & JsonFlag,
    ) => {
      // Everything that can be checked offline is, before connecting: a usage error exits 2 having touched nothing.
      if (/^[0-9]+$/.test(target)) assertPid('pid', target);
      else assertSafeId('job', target);
      assertSafeId('node', o.node);
      if (o.id !== undefined) assertSafeId('checkpointId', o.id);
      const vramBytes = o.vram !== undefined ? parseBytes('vram', o.vram) : undefined;
      const priority = parsePriority(o.priority);
      await withClient(async (k) => {
        if (o.reason === 'preemption' && !/^[0-9]+$/.test(target) && (await k.jobs.isOpen(target))) {
          // The job workflow preempts its own run: it checkpoints it, requeues it and resumes it from that checkpoint.
          if (o.id !== undefined)
            throw new InvalidInputError(
              'id',
              `job ${target} is run by a job workflow, which names its preemption checkpoint: leave --id out`,
            );
          if (o.leaveRunning)
            throw new InvalidInputError('leave-running', `a preemption stops job ${target}: leave --leave-running out`);
          const r = await k.preempt(target);
          emit<PreemptJson>(o, { jobId: target, result: r }, () =>
            printable(
              `${target} has a job workflow: preempted through it: ${r.outcome} (checkpoint ${r.checkpointId})${r.message ? ` — ${r.message}` : ''}`,
            ),
          );
          if (r.outcome !== 'requeued') process.exitCode = 1;
          return;
        }
        let leaveRunning = o.leaveRunning;
        if (!leaveRunning && !/^[0-9]+$/.test(target) && (await k.jobs.isOpen(target))) {
          // A dump that stops the process would end the job's run behind its workflow's back, which would count it
          // as a crash and restart it: a job's own workflow stops it (preempt, cancel); a checkpoint leaves it running.
          leaveRunning = true;
          if (!o.json)
            console.error(
              `job ${target} is run by a job workflow: checkpointed in place, it keeps running ('kybernate preempt ${target}' checkpoints, stops and requeues it)`,
            );
        }
        const { workflowId, request } = await k.startCheckpoint({
          target,
          node: o.node,
          leaveRunning,
          reason: o.reason,
          checkpointId: o.id,
          vramBytes,
          priority,
        });
        if (!o.json) console.log(`checkpoint ${request.checkpointId} started: ${k.uiLink(workflowId) ?? workflowId}`);
        if (!o.wait) {
          if (o.json)
            emit<CheckpointJson>(o, { checkpointId: request.checkpointId, workflowId, status: null }, () => '');
          return;
        }
        const r = await withProgress<CheckpointStatus>(`checkpoint ${request.checkpointId}`, o, (onStatus) =>
          k.checkpointResult(request.checkpointId, onStatus),
        );
        emit<CheckpointJson>(o, { checkpointId: request.checkpointId, workflowId, status: r }, () =>
          printable(
            `${r.checkpointId}: ${r.phase}${r.tier ? ` (tier ${r.tier})` : ''}${r.failureReason ? ` — ${r.failureReason}` : ''}${uploadedText(r)}${frozenText(r)}`,
          ),
        );
        if (r.phase === 'Failed') process.exitCode = 1;
      });
    },
  );

/** With --leave-running: how long the dump held the workload still (CRIU's measure), the pause it felt. */
function frozenText(r: CheckpointStatus): string {
  if (r.frozenMs === undefined) return '';
  return `; workload frozen ${r.frozenMs < 1000 ? `${Math.round(r.frozenMs)} ms` : `${(r.frozenMs / 1000).toFixed(2)} s`} by the dump`;
}

/** What the upload moved, and what S3 already held (content-addressed chunks, not sent again). */
function uploadedText(r: CheckpointStatus): string {
  if (!r.upload) return '';
  const reused = r.upload.bytesReused ?? 0;
  return `; ${formatBytes(r.upload.bytesSent)} sent to S3${reused > 0 ? `, ${formatBytes(reused)} already there` : ''}`;
}

interface JobFlags extends ReadyFlags, JsonFlag {
  node?: string;
  user?: string;
  vram?: string;
  cpu?: string;
  memory?: string;
  pids?: string;
  timeout?: string;
  priority?: string;
  tier?: string;
  restartPolicy?: string;
  maxRestarts?: string;
  backoffInitial?: string;
  backoffCap?: string;
  backoffReset?: string;
  checkpointEvery?: string;
  keep?: string;
  wait?: boolean;
}

program
  .command('run <job>')
  .description(
    'start a job: its command runs on a node (--node, else placed by free VRAM) under limits, restarted with CrashLoopBackOff; it runs in this directory',
  )
  .option('--node <name>', 'run on this node only (default: a node with enough free VRAM)')
  .option('--vram <size>', 'VRAM the job needs, e.g. 8GiB (default: none)')
  .option('--cpu <cores>', 'CPU limit in cores: 2, 0.5 or 500m')
  .option('--memory <size>', 'memory limit, e.g. 4GiB (over it the run is OOMKilled)')
  .option('--pids <n>', 'most processes and threads at once')
  .option(
    '--timeout <duration>',
    'wall-clock limit from the first start, e.g. 2h (then TimedOut, everything it started killed)',
  )
  .option('--priority <n>', PRIORITY_HELP, '5')
  .option(
    '--tier <tier>',
    'critical (restored from its last good checkpoint elsewhere past its restart limit) or normal',
    'normal',
  )
  .option('--restart-policy <policy>', 'Always, OnFailure or Never', 'Always')
  .option('--max-restarts <n>', 'restarts before the job is quarantined', '10')
  .option('--backoff-initial <duration>', 'first restart delay, doubling after each failed run', '10s')
  .option('--backoff-cap <duration>', 'longest restart delay', '5m')
  .option('--backoff-reset <duration>', 'a run that stayed up this long resets the delay', '10m')
  .option('--checkpoint-every <duration>', 'take a checkpoint this often (leave-running), e.g. 30m')
  .option('--keep <n>', 'with --checkpoint-every: keep the newest n periodic checkpoints')
  .option('--user <uid[:gid]>', "run as this numeric user (and group; default: the user's primary group on the node)")
  .option('--ready-tcp <port>', 'a run counts as started once a TCP connect to 127.0.0.1:<port> succeeds')
  .option('--ready-exec <command>', "a run counts as started once '<command>' (run by sh -c on the node) exits 0")
  .option('--wait', 'wait until the job runs (or stops trying) and print its state')
  .option('--json', JSON_HELP)
  .argument('<command...>', 'command and arguments (after --)')
  .action(async (job: string, command: string[], o: JobFlags) => {
    // Every field is checked before connecting: a usage error exits 2 having started nothing.
    const spec = jobSpecFromFields({
      jobId: job,
      command,
      cwd: process.cwd(),
      node: o.node,
      user: o.user,
      vram: o.vram,
      cpu: o.cpu,
      memory: o.memory,
      pids: o.pids,
      timeout: o.timeout,
      priority: o.priority,
      tier: o.tier,
      restartPolicy: o.restartPolicy,
      maxRestarts: o.maxRestarts,
      backoffInitial: o.backoffInitial,
      backoffCap: o.backoffCap,
      backoffReset: o.backoffReset,
      checkpointEvery: o.checkpointEvery,
      keep: o.keep,
      readiness: readinessFlags(o),
    });
    await withClient(async (k) => {
      const { workflowId } = await k.run(spec);
      if (!o.json) console.log(printable(`job ${spec.jobId} started: ${k.uiLink(workflowId) ?? workflowId}`));
      if (!o.wait) {
        if (o.json) emit<RunJson>(o, { jobId: spec.jobId, workflowId, status: null }, () => '');
        return;
      }
      const s = await withProgress<JobStatus>(`job ${spec.jobId}`, o, (onStatus) =>
        waitUntilStarted(k.jobs, spec.jobId, onStatus),
      );
      emit<RunJson>(o, { jobId: spec.jobId, workflowId, status: s }, () =>
        printable(`${s.jobId}: ${s.state}${s.node ? ` on ${s.node}` : ''}${s.reason ? ` — ${s.reason}` : ''}`),
      );
      if (s.state !== 'Running' && s.state !== 'Succeeded') process.exitCode = 1;
    });
  });

/** Polls the job until it has left Pending: Running, or a state that says why not. */
async function waitUntilStarted(jobs: JobsApi, jobId: string, onStatus?: OnStatus<JobStatus>): Promise<JobStatus> {
  for (;;) {
    const s = await jobs.status(jobId);
    if (s.state !== 'Pending') return s;
    onStatus?.(s);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

program
  .command('workload <job>')
  .description(
    'start a bare workload on a node through its agent, without a job (no limits, no restarts; detached: it outlives the agent); it runs in this directory',
  )
  .requiredOption('--node <name>', 'node to run on')
  .option('--user <uid[:gid]>', "run as this numeric user (and group; default: the user's primary group on the node)")
  .option('--json', JSON_HELP)
  .argument('<command...>', 'command and arguments (after --)')
  .action(async (job: string, command: string[], o: { node: string; user?: string } & JsonFlag) => {
    assertSafeId('job', job);
    assertSafeId('node', o.node);
    const user = o.user === undefined ? undefined : parseUser('user', o.user);
    await withClient(async (k) => {
      const info = await k.runWorkload({ node: o.node, jobId: job, command, cwd: process.cwd(), user });
      emit<WorkloadJson>(o, { node: o.node, workload: info }, () =>
        printable(`job ${info.jobId} running on ${o.node} as pid ${info.pid}; output ${info.logFile}`),
      );
    });
  });

program
  .command('jobs')
  .description('every job, like kubectl get pods: NAME STATUS RESTARTS NODE AGE NEXT-RETRY')
  .option('--json', JSON_HELP)
  .action(async (o: JsonFlag) => {
    await withClient(async (k) => {
      const rows = await k.list();
      emit(o, jobsJson(rows), () => (rows.length === 0 ? 'no jobs' : jobsTable(rows, Date.now())));
    });
  });

const preemptCommand = program
  .command('preempt <job>')
  .description(
    "checkpoint a running job and requeue it: it resumes from that checkpoint where it is placed next ('preempt schedule' for scheduled sweeps)",
  )
  .option('--json', JSON_HELP)
  .action(async (job: string, o: JsonFlag) => {
    assertSafeId('job', job);
    await withClient(async (k) => {
      const r = await k.preempt(job);
      emit<PreemptJson>(o, { jobId: job, result: r }, () =>
        printable(`${job}: ${r.outcome} (checkpoint ${r.checkpointId})${r.message ? ` — ${r.message}` : ''}`),
      );
      if (r.outcome !== 'requeued') process.exitCode = 1;
    });
  });

// ---- scheduled preemption: Temporal Schedules whose action is a preemptionSweep workflow ----
/**
 * --json of a schedule command: commander gives an option a parent also has (`preempt --json`) to the parent,
 * so it is read from the command line (no `--` here: every word is an option or a name).
 */
const scheduleJson = <T extends JsonFlag>(o: T): T => ({ ...o, json: Boolean(o.json) || jsonRequested() });

const scheduleCommand = preemptCommand
  .command('schedule')
  .description(
    'Temporal Schedules that preempt the least important running jobs (create, list, describe, pause, unpause, trigger, delete)',
  );

scheduleCommand
  .command('create <name>')
  .description(
    'a schedule whose sweep preempts running jobs, lowest priority (highest number) first, then youngest; never priority 0 or tier critical',
  )
  .requiredOption(
    '--cron <expr>',
    'when: five cron fields (minute hour day-of-month month day-of-week) or @hourly, @daily...',
  )
  .option(
    '--below-priority <p>',
    'only jobs less important than p (priority number above p, 0..10); default: any non-critical job',
  )
  .option('--max <n>', 'preempt at most n jobs per sweep (default 1)')
  .option('--zone <zone>', 'only jobs on nodes of this zone')
  .option(
    '--overlap <policy>',
    'when a sweep is still running at the next time: SKIP (default), BUFFER_ONE, BUFFER_ALL, CANCEL_OTHER, TERMINATE_OTHER, ALLOW_ALL',
  )
  .option('--json', JSON_HELP)
  .action(
    async (
      name: string,
      o: { cron: string; belowPriority?: string; max?: string; zone?: string; overlap?: string } & JsonFlag,
    ) => {
      // Every flag checked (naming it) before connecting: nothing is created from a bad line.
      const req = { name, cron: o.cron, belowPriority: o.belowPriority, max: o.max, zone: o.zone, overlap: o.overlap };
      parsePreemptionSchedule(req);
      await withClient(async (k) => {
        const info = await k.schedules.create(req);
        emit<ScheduleJson>(scheduleJson(o), { schedule: info }, () => `created ${scheduleText(info)}`);
      });
    },
  );

scheduleCommand
  .command('list')
  .description('every preemption schedule: NAME CRON SWEEP STATE NEXT RUN')
  .option('--json', JSON_HELP)
  .action(async (o: JsonFlag) => {
    await withClient(async (k) => {
      const rows = await k.schedules.list();
      emit<SchedulesJson>(scheduleJson(o), { schedules: rows }, () =>
        rows.length === 0 ? 'no preemption schedules' : schedulesTable(rows),
      );
    });
  });

scheduleCommand
  .command('describe <name>')
  .description('a schedule, its recent sweeps, and what the newest one preempted and why')
  .option('--json', JSON_HELP)
  .action(async (name: string, o: JsonFlag) => {
    assertSafeId('name', name);
    await withClient(async (k) => {
      const info = await k.schedules.describe(name);
      emit<ScheduleJson>(scheduleJson(o), { schedule: info }, () => scheduleText(info));
    });
  });

for (const [verb, what] of [
  ['pause', 'no sweeps start until unpaused (a running one goes on)'],
  ['unpause', 'sweeps start again at the scheduled times'],
] as const) {
  scheduleCommand
    .command(`${verb} <name>`)
    .description(what)
    .option('--note <text>', 'why (shown by describe)')
    .option('--json', JSON_HELP)
    .action(async (name: string, o: { note?: string } & JsonFlag) => {
      assertSafeId('name', name);
      await withClient(async (k) => {
        const info = verb === 'pause' ? await k.schedules.pause(name, o.note) : await k.schedules.unpause(name, o.note);
        emit<ScheduleJson>(scheduleJson(o), { schedule: info }, () => scheduleText(info));
      });
    });
}

scheduleCommand
  .command('trigger <name>')
  .description("start a sweep now (under the schedule's overlap policy: with SKIP, not while one runs)")
  .option('--json', JSON_HELP)
  .action(async (name: string, o: JsonFlag) => {
    assertSafeId('name', name);
    await withClient(async (k) => {
      await k.schedules.trigger(name);
      emit<ScheduleActionJson>(scheduleJson(o), { name, action: 'triggered' }, () =>
        printable(`${name}: sweep triggered ('kybernate preempt schedule describe ${name}' shows what it did)`),
      );
    });
  });

scheduleCommand
  .command('delete <name>')
  .description('delete the schedule (a sweep under way runs to its end)')
  .option('--json', JSON_HELP)
  .action(async (name: string, o: JsonFlag) => {
    assertSafeId('name', name);
    await withClient(async (k) => {
      await k.schedules.delete(name);
      emit<ScheduleActionJson>(scheduleJson(o), { name, action: 'deleted' }, () => printable(`${name}: deleted`));
    });
  });

program
  .command('release <job>')
  .description('lift a quarantine: start the job again from scratch, or from its last good checkpoint')
  .option('--from-checkpoint', 'resume from the last good checkpoint instead of from scratch')
  .option('--json', JSON_HELP)
  .action(async (job: string, o: { fromCheckpoint?: boolean } & JsonFlag) => {
    assertSafeId('job', job);
    await withClient(async (k) => {
      const s = await k.release(job, { fromCheckpoint: o.fromCheckpoint });
      emit<ReleaseJson>(o, { jobId: job, fromCheckpoint: Boolean(o.fromCheckpoint), status: s }, () =>
        printable(
          `${job} released${o.fromCheckpoint ? ' from its last good checkpoint' : ''}: ${s.state}${s.reason ? ` — ${s.reason}` : ''}`,
        ),
      );
    });
  });

program
  .command('cancel <job>')
  .description(
    'stop a job for good: its run stopped (SIGTERM, then SIGKILL after 30 s) and cleaned up; the job ends Failed, reason Cancelled',
  )
  .option('--no-wait', 'return once the cancel is asked for')
  .option('--json', JSON_HELP)
  .action(async (job: string, o: { wait: boolean } & JsonFlag) => {
    assertSafeId('job', job);
    await withClient(async (k) => {
      if (!o.wait) {
        await k.cancel(job, { wait: false });
        emit<CancelJson>(
          o,
          { jobId: job, waited: false, closed: false, status: null },
          () => `${job}: cancel asked for`,
        );
        return;
      }
      const closed = await k.cancel(job);
      const s = await k.describeJob(job).catch(() => null);
      emit<CancelJson>(o, { jobId: job, waited: true, closed, status: s }, () =>
        printable(
          closed
            ? `${job}: cancelled${s ? ` (${s.state}${s.reason ? `, ${s.reason}` : ''})` : ''}`
            : `${job}: cancel asked for; still cleaning up (an agent may be away)`,
        ),
      );
    });
  });

program
  .command('logs <job>')
  .description("a job's output: the current run's (stdout to stdout, stderr to stderr, in order)")
  .option('-p, --previous', 'the run before the current one')
  .option('-f, --follow', 'keep printing while the job runs, run after run, until it ends')
  .option('--timestamps', 'prefix each line with its time')
  .option('--json', `${JSON_HELP} (not with --follow)`)
  .action(async (job: string, o: { previous?: boolean; follow?: boolean; timestamps?: boolean } & JsonFlag) => {
    assertSafeId('job', job);
    if (o.previous && o.follow) throw new InvalidInputError('follow', 'cannot follow the previous run: it has ended');
    if (o.json && o.follow)
      throw new InvalidInputError('json', 'a followed log is a stream, not one JSON document: leave --follow out');
    if (!o.json) {
      await withClient((k) => k.logs(job, o, consoleSink(Boolean(o.timestamps))));
      return;
    }
    const doc: LogsJson = { jobId: job, lines: [], notes: [] };
    const sink: LogSink = {
      line: (l: RunLogLine) => doc.lines.push({ time: l.time, stream: l.stream, partial: l.partial, text: l.text }),
      note: (t) => doc.notes.push(t),
    };
    await withClient((k) => k.logs(job, o, sink));
    emit(o, doc, () => '');
  });

program
  .command('apply')
  .description(
    'start the jobs of a YAML file (jobs: [{ name, command, node, vram, ... }]), each on its own; prints what was applied and what failed',
  )
  .requiredOption('-f, --file <file>', 'the jobs file')
  .option('--json', JSON_HELP)
  .action(async (o: { file: string } & JsonFlag) => {
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
        k.jobs,
        entries,
        (e) =>
          e instanceof JobExistsError
            ? { spec: e.existing?.spec ?? null, state: e.existing?.state ?? 'unknown' }
            : null,
        (e) => describeError(e).message,
      );
      const doc: ApplyJson = applyJson(outcomes);
      emit(o, doc, () =>
        [
          ...outcomes.map((r) => printable(`${r.name ?? `jobs[${r.index}]`}: ${r.result}: ${r.detail}`)),
          `${outcomes.length} jobs: ${doc.applied} applied, ${doc.unchanged} unchanged, ${doc.failed} failed`,
        ].join('\n'),
      );
      if (doc.failed > 0) process.exitCode = 1;
    });
  });

program
  .command('checkpoints')
  .description('list checkpoints')
  .option('--job <job>', 'only this job')
  .addOption(new Option('--tier <tier>', 'only this tier').choices(['s3', 'nvme']))
  .option('--json', JSON_HELP)
  .action(async (o: { job?: string; tier?: Tier } & JsonFlag) => {
    if (o.job !== undefined) assertSafeId('job', o.job);
    await withClient(async (k) => {
      // Answered by Temporal's visibility store (no worker needed), within a bound.
      const rows = await k.withinTemporal(() => k.listCheckpoints({ job: o.job, tier: o.tier }));
      // A job's checkpoints (a handful) also show their size, from metadata.json in S3, and their age.
      const listed: CheckpointsJson['checkpoints'] = [];
      for (const r of rows)
        listed.push(
          o.job === undefined
            ? r
            : { ...r, sizeBytes: r.tier === 's3' ? await k.checkpointSize(r.checkpointId) : null },
        );
      const now = Date.now();
      emit<CheckpointsJson>(o, { checkpoints: listed }, () =>
        listed.length === 0
          ? 'no checkpoints'
          : listed
              .map((r) => {
                const size =
                  r.sizeBytes === undefined
                    ? ''
                    : ` size ${(r.sizeBytes === null ? '-' : formatBytes(r.sizeBytes)).padEnd(10)} age ${formatAge(now - Date.parse(r.startedAt))}`;
                return printable(
                  `${r.checkpointId.padEnd(36)} job ${r.jobId.padEnd(16)} node ${r.node.padEnd(10)} ${r.phase.padEnd(14)} tier ${(r.tier || '-').padEnd(5)}${size}`,
                );
              })
              .join('\n'),
      );
    });
  });

program
  .command('describe <checkpoint-or-kind> [name]')
  .description(
    "a checkpoint's phase, tier and the history of its attempts; 'describe job <job>': a job's spec, state, runs, events and checkpoints",
  )
  .option('--json', JSON_HELP)
  .action(async (target: string, name: string | undefined, o: JsonFlag) => {
    if (name !== undefined) {
      // `describe job <name>`; a checkpoint is described by its id alone.
      if (target !== 'job')
        throw new InvalidInputError(
          'kind',
          `expected 'describe job <job>' or 'describe <checkpoint>' (got '${target}' '${name}')`,
        );
      assertSafeId('job', name);
      await withClient(async (k) => {
        const s = await k.describeJob(name);
        emit<DescribeJson>(o, { job: s }, () => describeJob(s, Date.now()));
      });
      return;
    }
    assertSafeId('checkpoint', target);
    await withClient(async (k) => {
      const s = await k.describe(target);
      emit<DescribeJson>(o, { checkpoint: s }, () => printableJson(JSON.stringify(s, null, 2)));
    });
  });

interface ReadyFlags {
  readyTcp?: string;
  readyExec?: string;
}

/** --ready-tcp / --ready-exec as a readiness probe (validated by the client, which names the field). */
function readinessFlags(o: ReadyFlags): Readiness | undefined {
  if (o.readyTcp !== undefined && o.readyExec !== undefined)
    throw new InvalidInputError('ready-tcp', 'give --ready-tcp or --ready-exec, not both');
  if (o.readyTcp !== undefined) {
    if (!/^\d+$/.test(o.readyTcp) || Number(o.readyTcp) < 1 || Number(o.readyTcp) > 65535)
      throw new InvalidInputError('ready-tcp', `expected a port number 1-65535 (got '${o.readyTcp}')`);
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
  .option('--priority <n>', PRIORITY_HELP, '5')
  .option('--no-wait', 'return once started')
  .option('--json', JSON_HELP)
  .action(
    async (
      id: string,
      o: { node?: string; placementDeadline: string; priority?: string; wait: boolean } & ReadyFlags & JsonFlag,
    ) => {
      assertSafeId('checkpoint', id);
      const priority = parsePriority(o.priority);
      if (o.node !== undefined) assertSafeId('node', o.node);
      parseDuration('placement-deadline', o.placementDeadline);
      await withClient(async (k) => {
        const { workflowId } = await k.startRestore({
          checkpointId: id,
          node: o.node,
          placementDeadline: o.placementDeadline,
          readiness: readinessFlags(o),
          priority,
        });
        if (!o.json) console.log(`restore of ${id} started: ${k.uiLink(workflowId) ?? workflowId}`);
        if (!o.wait) {
          if (o.json) emit<RestoreJson>(o, { checkpointId: id, workflowId, status: null }, () => '');
          return;
        }
        const r = await withProgress<RestoreStatus>(`restore ${id}`, o, (onStatus) =>
          k.restoreResult(workflowId, onStatus),
        );
        emit<RestoreJson>(o, { checkpointId: id, workflowId, status: r }, () =>
          printable(
            `${id}: ${r.phase} on ${r.node} as pid ${r.pid} (from ${r.source}${r.bytesFromNode ? `, ${formatBytes(r.bytesFromNode)} of it from chunks already on ${r.node}` : ''}); attempts: ${r.attempts.map((a) => `${a.node}:${a.outcome}`).join(', ')}${r.failureReason ? ` — ${r.failureReason}` : ''}`,
          ),
        );
        if (r.phase === 'Failed') process.exitCode = 1;
      });
    },
  );

program
  .command('migrate <job>')
  .description(
    'checkpoint a workload on its node and restore it on another, preferring --to: a job run by a job workflow through that workflow, a bare workload as one migrate workflow',
  )
  .option(
    '--from <node>',
    'node the job runs on (default: where it was last started or restored; a job workflow knows its own)',
  )
  .requiredOption('--to <node>', 'node to move it to')
  .option('--ready-tcp <port>', 'restored only once a TCP connect to 127.0.0.1:<port> succeeds')
  .option('--ready-exec <command>', "restored only once '<command>' (run by sh -c on the node) exits 0")
  .option('--priority <n>', PRIORITY_HELP, '5')
  .option('--no-wait', 'return once started')
  .option('--json', JSON_HELP)
  .action(
    async (job: string, o: { from?: string; to: string; priority?: string; wait: boolean } & ReadyFlags & JsonFlag) => {
      assertSafeId('job', job);
      const priority = parsePriority(o.priority);
      if (o.from !== undefined) assertSafeId('from', o.from);
      assertSafeId('to', o.to);
      await withClient(async (k) => {
        if (await k.jobs.isOpen(job)) {
          // Only the job's own workflow moves its run: moved from outside, the job would start it again beside the copy.
          const ready = readinessFlags(o);
          if (ready !== undefined)
            throw new InvalidInputError(
              o.readyTcp !== undefined ? 'ready-tcp' : 'ready-exec',
              `job ${job} is run by a job workflow: its resumed run is ready by its spec's readiness (set with 'run'), not this flag`,
            );
          const workflowId = jobWorkflowId(job);
          if (!o.json)
            console.log(
              `job ${job} is run by a job workflow: moved through it (${k.uiLink(workflowId) ?? workflowId})`,
            );
          const r = await withProgress<MigrateStatus>(`migrate ${job}`, o, (onStatus) =>
            k.migrateJob({ jobId: job, from: o.from, to: o.to, wait: o.wait }, onStatus),
          );
          emit<MigrateJson>(o, { jobId: job, checkpointId: r.checkpointId, workflowId, status: r }, () =>
            printable(`${job}: ${r.phase}${r.failureReason ? ` — ${r.failureReason}` : ''}`),
          );
          if (r.phase !== 'Migrated' && !(r.phase === 'Restoring' && !o.wait)) process.exitCode = 1;
          return;
        }
        const { workflowId, checkpointId } = await k.startMigration({
          jobId: job,
          from: o.from,
          to: o.to,
          readiness: readinessFlags(o),
          priority,
        });
        if (!o.json) console.log(`migration of ${job} started: ${k.uiLink(workflowId) ?? workflowId}`);
        if (!o.wait) {
          if (o.json) emit<MigrateJson>(o, { jobId: job, checkpointId, workflowId, status: null }, () => '');
          return;
        }
        const r = await withProgress<MigrateStatus>(`migrate ${job}`, o, (onStatus) =>
          k.migrationResult(workflowId, onStatus),
        );
        emit<MigrateJson>(o, { jobId: job, checkpointId, workflowId, status: r }, () =>
          printable(`${job}: ${r.phase}${r.failureReason ? ` — ${r.failureReason}` : ''}`),
        );
        if (r.phase !== 'Migrated') process.exitCode = 1;
      });
    },
  );

program
  .command('gc')
  .description(
    'delete the content-addressed chunks no checkpoint in S3 names any more (e.g. after retention deleted checkpoints); waits for uploads in flight to finish first',
  )
  .option('--min-age <duration>', 'keep unnamed chunks younger than this (an upload may be about to name them)', '1h')
  .option('--dry-run', 'count what would be deleted; delete nothing')
  .option('--json', JSON_HELP)
  .action(async (o: { minAge: string; dryRun?: boolean } & JsonFlag) => {
    const minAgeMs = parseSeconds('--min-age', o.minAge);
    await withClient(async (k) => {
      const r = await k.collectChunks({ minAgeMs, dryRun: o.dryRun === true });
      emit(o, r, () =>
        [
          `${r.dryRun ? 'dry run: ' : ''}${r.outcome}${r.reason ? ` (${r.reason})` : ''}`,
          `checkpoints read  ${r.checkpoints}${r.unreadableMetadata.length > 0 ? ` (${r.unreadableMetadata.length} unreadable, their chunk names kept: ${r.unreadableMetadata.join(', ')})` : ''}`,
          `chunks            ${r.chunks} (${formatBytes(r.chunkBytes)})`,
          `  named           ${r.referenced}`,
          `  unnamed, recent ${r.keptRecent} (kept: younger than ${o.minAge})`,
          `  ${r.dryRun ? 'would delete   ' : 'deleted        '} ${r.deleted} (${formatBytes(r.deletedBytes)})`,
        ].join('\n'),
      );
      if (r.outcome === 'skipped') process.exitCode = 1;
    });
  });

const gcScheduleCommand = program
  .command('gc-schedule')
  .description(
    "collect unnamed chunks at a fixed interval (a Temporal Schedule; never at once with 'kybernate gc'): set, show, trigger, delete",
  );

gcScheduleCommand
  .command('set')
  .description('create the schedule, or change its interval and minimum age')
  .requiredOption('--every <duration>', 'how often: 1m to 7d, e.g. 6h')
  .option('--min-age <duration>', 'keep unnamed chunks younger than this (an upload may be about to name them)', '1h')
  .option('--json', JSON_HELP)
  .action(async (o: { every: string; minAge: string } & JsonFlag) => {
    // Every flag checked (naming it) before connecting: nothing is created from a bad line.
    const everyMs = parseSeconds('--every', o.every);
    const input = { minAgeMs: parseSeconds('--min-age', o.minAge) };
    checkChunkGcSchedule(everyMs, input);
    await withClient(async (k) => {
      const schedule = await k.chunkGcSchedule.set(everyMs, input);
      emit<ChunkGcScheduleJson>(o, { schedule }, () => chunkGcScheduleText(schedule));
    });
  });

gcScheduleCommand
  .command('show')
  .description('the schedule, its next run, and what the last collection did')
  .option('--json', JSON_HELP)
  .action(async (o: JsonFlag) => {
    await withClient(async (k) => {
      const schedule = await k.chunkGcSchedule.show();
      emit<ChunkGcScheduleJson>(o, { schedule }, () => chunkGcScheduleText(schedule));
    });
  });

gcScheduleCommand
  .command('trigger')
  .description("start a collection now (not while one of the schedule's runs: 'gc-schedule show' tells what it did)")
  .option('--json', JSON_HELP)
  .action(async (o: JsonFlag) => {
    await withClient(async (k) => {
      const found = await k.chunkGcSchedule.trigger();
      emit<ChunkGcScheduleActionJson>(o, { action: 'triggered', found }, () =>
        found
          ? "collection triggered ('kybernate gc-schedule show' shows what it did)"
          : "no chunk-gc schedule to trigger ('kybernate gc' collects once, now)",
      );
      if (!found) process.exitCode = 1;
    });
  });

gcScheduleCommand
  .command('delete')
  .description('delete the schedule (a collection under way runs to its end)')
  .option('--json', JSON_HELP)
  .action(async (o: JsonFlag) => {
    await withClient(async (k) => {
      const found = await k.chunkGcSchedule.delete();
      emit<ChunkGcScheduleActionJson>(o, { action: 'deleted', found }, () =>
        found
          ? 'chunk-gc schedule deleted (a control worker creates its default one again when it starts, unless KYBERNATE_CHUNK_GC_EVERY=off)'
          : 'no chunk-gc schedule to delete',
      );
    });
  });

program
  .command('nodes')
  .description('registered nodes: NAME, STATE (Ready, Unhealthy, Left), SCORE, ZONE, GPUS, FREE VRAM, LAST SEEN')
  .argument('[node...]', 'only these nodes (default: every registered node)')
  .option('--json', JSON_HELP)
  .action(async (nodes: string[], o: JsonFlag) => {
    for (const n of nodes) assertSafeId('node', n);
    await withClient(async (k) => {
      const doc: NodesJson = { nodes: await k.nodes(nodes) };
      emit(o, doc, () => (doc.nodes.length === 0 ? 'no nodes registered' : nodesTable(doc.nodes, Date.now())));
    });
  });

// Exit codes: 0 done; 1 the operation failed (a workflow failed, a component is down); 2 usage error (commander's
// own, a value out of bounds, a bad id), with nothing started. Commander has printed its own messages already.
// With --json the error is one document on stderr, {"error":{"code","message"}}, with the same exit code.
program.parseAsync(process.argv).catch((e: unknown) => {
  const { message, exitCode } = describeError(e);
  if (jsonRequested()) {
    if (exitCode !== 0) console.error(jsonText(errorJson(e).doc));
  } else if (!(e instanceof CommanderError)) console.error(`error: ${message}`);
  process.exit(exitCode);
});
