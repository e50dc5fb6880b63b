import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { WorkflowFailedError, WorkflowNotFoundError } from '@temporalio/client';
import { KybernateClient } from '../../clients/api';
import type { CheckpointRecord } from '../../clients/record';
import { freePort, killGroup, unregisterProcess } from '../../deploy/local/stack';
import { startControlWorker } from '../../deploy/local/workers';
import { checkpointWorkflowId, CONTROL_QUEUE, restoreWorkflowId } from '../../common/queues';
import { jobWorkflowId } from '../../common/job';
import { Agent, client, lastTick, PATTERN, PYTHON, stack, until } from '../support/stack';

/** The CLI, run as an operator runs it, against the test stack. */
const CLI = path.resolve(__dirname, '../../dist/clients/cli.js');

interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

function cli(args: string[], env: Record<string, string> = {}, timeoutMs = 90000): CliResult {
  const t0 = Date.now();
  const r = spawnSync(process.execPath, [CLI, ...args], {
    env: { ...process.env, KYBERNATE_HOME: stack().home, ...env },
    encoding: 'utf8',
    timeout: timeoutMs,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, ms: Date.now() - t0 };
}

/** No raw control character (ESC, CR, C1, a newline other than line ends) reaches the terminal. */
const RAW_CONTROL = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/;

let k: KybernateClient;
let agent: Agent;
const NODE = 'cli-a';
const FAILED = 'cli-failed';
const DURABLE = 'cli-durable';

async function workflowExists(workflowId: string): Promise<boolean> {
  return k.client.workflow
    .getHandle(workflowId)
    .describe()
    .then(
      () => true,
      (e: unknown) => {
        if (e instanceof WorkflowNotFoundError) return false;
        throw e;
      },
    );
}

beforeAll(async () => {
  k = await client();
  agent = await Agent.start({ node: NODE, declaredVramBytes: 8 * 2 ** 30 });
  // A checkpoint that Failed in Pending: the pid does not exist on the node.
  const { request } = await k.startCheckpoint({ target: '3999999', node: NODE, checkpointId: FAILED });
  await expect(k.checkpointResult(request.checkpointId)).rejects.toThrow(WorkflowFailedError);
}, 180000);
afterAll(async () => {
  await agent.stop();
  await k.close();
});

describe('the CLI tells the truth', () => {
  test('a failed workflow prints its real cause and exits 1: restore of a Failed checkpoint, checkpoint of a missing pid', () => {
    // A restore that ends Failed fails its workflow with its status in the failure: the CLI prints that status
    // (result on stdout, exit 1), not the SDK's wrapper.
    const r = cli(['restore', FAILED]);
    expect({ status: r.status, stdout: r.stdout.trim().split('\n').pop() }).toEqual({
      status: 1,
      stdout: expect.stringContaining(`checkpoint '${FAILED}' is Failed, not restorable`),
    });
    expect(r.stdout).toContain('CheckpointNotFound');
    expect(`${r.stdout}${r.stderr}`).not.toContain('Workflow execution failed');

    const c = cli(['checkpoint', '3999998', '--node', NODE, '--id', 'cli-nopid']);
    expect(c.stdout).toContain('checkpoint cli-nopid started');
    expect(c.stderr).toMatch(/^error: workflow failed: .*no such process: pid 3999998/m);
    expect(c.status).toBe(1);
  });

  test('a checkpoint that ends Failed prints its failure reason and exits 1; the workload runs on', async () => {
    // A Unix socket connected to a peer outside the workload's process tree (this test): CRIU cannot bring that
    // peer back, refuses to dump it (no --ext-unix-sk), and the step fails cleanly.
    const sockPath = path.join(stack().home, 'cli-peer.sock');
    const peers: net.Socket[] = [];
    const server = net.createServer((c) => void peers.push(c));
    await new Promise<void>((resolve) => server.listen(sockPath, resolve));
    try {
      const script = [
        'import socket, sys, time',
        's = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])',
        'n = 0',
        'while True:',
        "    n += 1; print(f'tick {n}', flush=True); time.sleep(0.2)",
      ].join('\n');
      const w = await k.runWorkload({ node: NODE, jobId: 'cli-unix', command: [PYTHON, '-c', script, sockPath] });
      await until('cli-unix ticking', () => lastTick(w.logFile) >= 2, 30000);
      expect(peers.length).toBe(1);
      const r = cli(['checkpoint', 'cli-unix', '--node', NODE, '--id', 'cli-unix-1', '--leave-running']);
      expect(r.stdout).toMatch(/^cli-unix-1: Failed — DumpingProcess: criuDump: CriuDumpFailed: /m);
      expect(r.status).toBe(1);
      const before = lastTick(w.logFile);
      await until('cli-unix still ticking', () => lastTick(w.logFile) > before + 2, 20000);
      process.kill(w.pid, 'SIGKILL');
    } finally {
      for (const c of peers) c.destroy();
      server.close();
    }
  });

  test('--json: one document on stdout for describe, checkpoints and nodes; a failed workflow is an error document with exit 1', () => {
    const d = cli(['describe', FAILED, '--json']);
    expect(d.status).toBe(0);
    const doc = JSON.parse(d.stdout) as { checkpoint: { checkpointId: string; phase: string } };
    expect(doc.checkpoint).toMatchObject({ checkpointId: FAILED, phase: 'Failed' });

    const list = cli(['checkpoints', '--job', 'pid-3999999', '--json']);
    expect(list.status).toBe(0);
    const rows = (JSON.parse(list.stdout) as { checkpoints: { checkpointId: string; sizeBytes?: number | null }[] })
      .checkpoints;
    expect(rows.find((r) => r.checkpointId === FAILED)).toMatchObject({ checkpointId: FAILED, sizeBytes: null });

    const n = cli(['nodes', NODE, '--json'], {}, 60000);
    expect(n.status).toBe(0);
    expect((JSON.parse(n.stdout) as { nodes: { node: string; lastSeen: string | null }[] }).nodes).toEqual([
      expect.objectContaining({ node: NODE }),
    ]);

    // A restore that cannot start fails its workflow: without a status in the failure, an error document on
    // stderr; with one (workflows that carry their status in the failure), the status on stdout. Exit 1 either way.
    const r = cli(['restore', FAILED, '--json']);
    expect(r.status).toBe(1);
    if (r.stdout === '') {
      const err = JSON.parse(r.stderr) as { error: { code: string; message: string } };
      expect(err.error.code).toBe('WORKFLOW_FAILED');
      expect(err.error.message).toContain(`checkpoint '${FAILED}' is Failed, not restorable`);
    } else {
      const st = (JSON.parse(r.stdout) as { status: { phase: string; failureReason: string } }).status;
      expect(st.phase).toBe('Failed');
      expect(st.failureReason).toContain(`checkpoint '${FAILED}' is Failed, not restorable`);
    }
  });

  test('sizes and durations out of bounds exit 2 naming the field, and nothing is started', async () => {
    const v1 = cli(['checkpoint', 'cli-job', '--node', NODE, '--id', 'cli-vram1', '--vram', '1e30']);
    expect(v1.stderr).toMatch(/^error: vram: expected a size .*got '1e30'/m);
    expect(v1.status).toBe(2);
    const v2 = cli(['checkpoint', 'cli-job', '--node', NODE, '--id', 'cli-vram2', '--vram', '1000TiB']);
    expect(v2.stderr).toMatch(/^error: vram: must be at most 17592186044416 bytes \(16 TiB\)/m);
    expect(v2.status).toBe(2);
    const d = cli(['restore', 'cli-ddl', '--placement-deadline', '1e21h']);
    expect(d.stderr).toMatch(/^error: placement-deadline: expected a duration/m);
    expect(d.status).toBe(2);
    const d2 = cli(['restore', 'cli-ddl', '--placement-deadline', '30d']);
    expect(d2.stderr).toMatch(/^error: placement-deadline: must be from 1s to 7d/m);
    expect(d2.status).toBe(2);
    const ri = cli(['agent', '--node', 'cli-never', '--report-interval', '0']);
    expect(ri.stderr).toMatch(/^error: report-interval: must be from 1s to 7d/m);
    expect(ri.status).toBe(2);
    const dv = cli(['agent', '--node', 'cli-never', '--declared-vram', '1000TiB']);
    expect(dv.stderr).toMatch(/^error: declared-vram: must be at most/m);
    expect(dv.status).toBe(2);
    expect(await workflowExists(checkpointWorkflowId('cli-vram1'))).toBe(false);
    expect(await workflowExists(checkpointWorkflowId('cli-vram2'))).toBe(false);
    expect(await workflowExists(restoreWorkflowId('cli-ddl', 1))).toBe(false);
    expect(await workflowExists('node/cli-never')).toBe(false);
  });

  test('a crafted workflow input fails at once in one line naming the field, before any activity', async () => {
    const h = await k.client.workflow.start('checkpoint', {
      workflowId: checkpointWorkflowId('cli-crafted'),
      taskQueue: CONTROL_QUEUE,
      args: [
        {
          checkpointId: 'cli-crafted',
          jobId: 'cli-job',
          node: NODE,
          leaveRunning: false,
          reason: 'manual',
          vramBytes: 1e30,
        },
      ],
    });
    const err = await h.result().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    expect((err as WorkflowFailedError).cause?.message).toMatch(
      /^invalid checkpoint request: vramBytes: must be at most 17592186044416 bytes \(16 TiB\) \(got 1e\+30\)$/,
    );
    const events = (await h.fetchHistory()).events ?? [];
    expect(events.some((e) => e.activityTaskScheduledEventAttributes)).toBe(false);
    // describe shows the same line for it, from the workflow's record.
    const r = cli(['describe', 'cli-crafted']);
    expect(r.status).toBe(0);
    const rec = JSON.parse(r.stdout) as CheckpointRecord;
    expect(rec.phase).toBe('Failed');
    expect(rec.failureReason).toMatch(
      /^workflow failed: InvalidInput: invalid checkpoint request: vramBytes: must be at most/,
    );
    const r2 = cli(['restore', 'cli-x', '--placement-deadline', '2m', '--node', 'bad/node']);
    expect(r2.stderr).toMatch(/^error: node: must not contain a path separator/m);
    expect(r2.status).toBe(2);
  });

  test("usage errors exit 2, commander's own included; help exits 0", () => {
    const unknown = cli(['checkpoints', '--bogus']);
    expect(unknown.stderr).toContain("error: unknown option '--bogus'");
    expect(unknown.status).toBe(2);
    const missingArg = cli(['restore']);
    expect(missingArg.stderr).toContain("error: missing required argument 'checkpoint'");
    expect(missingArg.status).toBe(2);
    const missingOpt = cli(['checkpoint', 'job']);
    expect(missingOpt.stderr).toContain("error: required option '--node <name>' not specified");
    expect(missingOpt.status).toBe(2);
    const choice = cli(['checkpoints', '--tier', 'tape']);
    expect(choice.stderr).toContain("argument 'tape' is invalid");
    expect(choice.status).toBe(2);
    const command = cli(['frobnicate']);
    expect(command.stderr).toContain("error: unknown command 'frobnicate'");
    expect(command.status).toBe(2);
    const help = cli(['restore', '--help']);
    expect(help.stdout).toContain('--placement-deadline');
    expect(help.status).toBe(0);
  });

  test("control characters in echoed input are escaped, in our messages and commander's", () => {
    const evil = 'x\u001b[31m\nerror: forged\u009b2J';
    for (const r of [
      cli(['describe', evil]),
      cli(['checkpoint', evil, '--node', NODE]),
      cli(['checkpoints', `--${evil}`]),
      cli(['restore', 'c', '--placement-deadline', evil]),
    ]) {
      expect(r.status).toBe(2);
      expect(r.stderr).toContain('x\\x1b[31m\\nerror: forged\\x9b2J');
      expect(r.stderr).not.toMatch(RAW_CONTROL);
      expect(r.stderr.split('\n').filter((l) => l.startsWith('error: forged'))).toEqual([]);
    }
  });

  test('Temporal unreachable: the CLI fails within seconds naming it', async () => {
    const port = await freePort();
    const r = cli(['checkpoints'], { KYBERNATE_TEMPORAL_ADDRESS: `127.0.0.1:${port}` }, 30000);
    expect(r.stderr).toContain(`error: Temporal is not answering (127.0.0.1:${port})`);
    expect(r.status).toBe(1);
    expect(r.ms).toBeLessThan(20000);
  });

  test('with the control worker down, describe and checkpoints answer from Temporal and S3, and what needs the worker fails fast naming it', async () => {
    // A Durable checkpoint, to be described from its history later.
    const info = await k.runWorkload({ node: NODE, jobId: 'cli-job', command: [PYTHON, PATTERN, '16', 'cli-job'] });
    await until('cli-job ticking', () => lastTick(info.logFile) >= 2, 30000);
    const { request } = await k.startCheckpoint({ target: 'cli-job', node: NODE, checkpointId: DURABLE });
    expect((await k.checkpointResult(request.checkpointId)).phase).toBe('Durable');
    await until(
      'visibility',
      async () => (await k.listCheckpoints({ job: 'cli-job' })).some((c) => c.phase === 'Durable'),
      20000,
    );

    const s = stack();
    const worker = s.processes.find((p) => p.component === 'control-worker');
    expect(worker).toBeDefined();
    await killGroup(worker!.pid, 5000);
    unregisterProcess(worker!.pid, s.home);
    try {
      const list = cli(['checkpoints', '--job', 'cli-job'], {}, 60000);
      expect(list.stdout).toMatch(new RegExp(`${DURABLE} .*Durable .*tier s3`));
      expect(list.status).toBe(0);
      expect(list.ms).toBeLessThan(20000);

      const durable = cli(['describe', DURABLE], {}, 60000);
      expect(durable.status).toBe(0);
      expect(durable.ms).toBeLessThan(40000);
      const d = JSON.parse(durable.stdout) as CheckpointRecord;
      expect(d.answeredBy).toBe('temporal-record');
      expect(d.note).toContain('control worker is not answering');
      expect(d.phase).toBe('Durable');
      expect(d.tier).toBe('s3');
      expect(d.history.some((h) => h.phase === 'Uploading' && h.outcome === 'ok')).toBe(true); // the full status, from history
      expect(d.s3MetadataJson).toBe('present');

      const failed = cli(['describe', FAILED], {}, 60000);
      expect(failed.status).toBe(0);
      const f = JSON.parse(failed.stdout) as CheckpointRecord;
      expect(f.workflowStatus).toBe('FAILED');
      expect(f.phase).toBe('Failed');
      expect(f.failureReason).toContain('no such process: pid 3999999');
      expect(f.s3MetadataJson).toBe('absent');

      // S3 out of reach as well: still an answer, saying so.
      const port = await freePort();
      const noS3 = cli(['describe', DURABLE], { KYBERNATE_S3_ENDPOINT: `http://127.0.0.1:${port}` }, 60000);
      expect(noS3.status).toBe(0);
      expect((JSON.parse(noS3.stdout) as CheckpointRecord).s3MetadataJson).toMatch(
        new RegExp(`^unreachable \\(http://127.0.0.1:${port}\\)`),
      );

      // A node's inventory lives in its registry workflow: only the worker can answer, so say it is down.
      const nodes = cli(['nodes', NODE], {}, 60000);
      expect(nodes.stderr).toMatch(
        /^error: control worker is not answering \(task queue kybernate-control\): no answer to a query of node\/cli-a within 10s/m,
      );
      expect(nodes.status).toBe(1);
      expect(nodes.ms).toBeLessThan(40000);
    } finally {
      await startControlWorker(stack());
    }
    // Back: the live answer again (the first queries may still go unanswered while the new worker warms up and
    // the server gives up on the dead worker's sticky queue).
    const live = await until(
      'a live answer from the restarted worker',
      () => {
        const r = cli(['describe', DURABLE]);
        const body = r.status === 0 ? (JSON.parse(r.stdout) as Partial<CheckpointRecord>) : null;
        return body && body.answeredBy === undefined ? body : null;
      },
      90000,
      1000,
    );
    expect(live.phase).toBe('Durable');
    expect(live.history?.length).toBeGreaterThan(0);
  });
});

describe('jobs: usage errors exit 2 naming the field, and start nothing', () => {
  test('run: bad limits, timeout, priority, command and names are refused before anything is started', async () => {
    const cases: [string[], RegExp][] = [
      [['run', 'cli-job-mem', '--memory', '1e30', '--', 'sleep', '1'], /^error: memory: expected a size .*got '1e30'/m],
      [['run', 'cli-job-mem0', '--memory', '0', '--', 'sleep', '1'], /^error: memory: must be more than 0 bytes/m],
      [['run', 'cli-job-cpu', '--cpu', '-1', '--', 'sleep', '1'], /^error: cpu: expected a number of cores/m],
      [
        ['run', 'cli-job-pids', '--pids', '99999999', '--', 'sleep', '1'],
        /^error: pids: must be a whole number of processes from 1 to 4194304/m,
      ],
      [
        ['run', 'cli-job-timeout', '--timeout', '0', '--', 'sleep', '1'],
        /^error: timeout: expected a duration .*got '0'/m,
      ],
      [
        ['run', 'cli-job-prio', '--priority', '11', '--', 'sleep', '1'],
        /^error: priority: must be a whole number from 0 to 10 \(got 11\)/m,
      ],
      [['run', 'cli-job-keep', '--keep', '3', '--', 'sleep', '1'], /^error: keep: needs checkpoint-every/m],
      [['run', 'cli-job-empty', '--', ''], /^error: command\[0\]: the program must not be empty/m],
      [['run', 'cli-job-none'], /^error: missing required argument 'command'/m],
      [['run', 'cli/job', '--', 'sleep', '1'], /^error: job: must not contain a path separator/m],
      [['run', 'cli\u0007job', '--', 'sleep', '1'], /^error: job: must be 1-128 characters .*got 'cli\\x07job'/m],
    ];
    for (const [args, message] of cases) {
      const r = cli(args);
      expect({ args, stderr: r.stderr, status: r.status }).toEqual({
        args,
        stderr: expect.stringMatching(message),
        status: 2,
      });
    }
    for (const id of [
      'cli-job-mem',
      'cli-job-mem0',
      'cli-job-cpu',
      'cli-job-pids',
      'cli-job-timeout',
      'cli-job-prio',
      'cli-job-keep',
      'cli-job-empty',
      'cli-job-none',
    ]) {
      expect({ id, exists: await workflowExists(jobWorkflowId(id)) }).toEqual({ id, exists: false });
    }
  });

  test('run on an unknown node exits 2 naming --node, and starts nothing', async () => {
    const r = cli(['run', 'cli-job-nowhere', '--node', 'cli-nowhere', '--', 'sleep', '1']);
    expect(r.stderr).toMatch(/^error: node: unknown node 'cli-nowhere': no agent has registered it/m);
    expect(r.status).toBe(2);
    expect(await workflowExists(jobWorkflowId('cli-job-nowhere'))).toBe(false);
  });

  test('describe job, logs, preempt and release of a job that does not exist exit 2 naming it', () => {
    for (const args of [
      ['describe', 'job', 'cli-no-job'],
      ['logs', 'cli-no-job'],
      ['preempt', 'cli-no-job'],
      ['release', 'cli-no-job'],
    ]) {
      const r = cli(args);
      expect({ args, stderr: r.stderr, status: r.status }).toEqual({
        args,
        stderr: expect.stringMatching(/^error: job: no job 'cli-no-job'/m),
        status: 2,
      });
    }
    const kind = cli(['describe', 'jobs', 'x']);
    expect(kind.stderr).toMatch(/^error: kind: expected 'describe job <job>' or 'describe <checkpoint>'/m);
    expect(kind.status).toBe(2);
    const both = cli(['logs', 'cli-no-job', '--previous', '-f']);
    expect(both.stderr).toMatch(/^error: follow: cannot follow the previous run/m);
    expect(both.status).toBe(2);
  });

  test('apply: a YAML syntax error exits 2 before any job is started', async () => {
    const file = path.join(stack().home, 'cli-jobs-broken.yaml');
    fs.writeFileSync(
      file,
      ['jobs:', '  - name: cli-apply-syntax', `    command: [sleep, "1"]`, `    node: ${NODE}`, '  - name: [oops'].join(
        '\n',
      ),
    );
    const r = cli(['apply', '-f', file]);
    expect(r.stderr).toMatch(/^error: file: .*cli-jobs-broken\.yaml: not valid YAML/m);
    expect(r.status).toBe(2);
    expect(await workflowExists(jobWorkflowId('cli-apply-syntax'))).toBe(false);
    const missing = cli(['apply', '-f', path.join(stack().home, 'no-such.yaml')]);
    expect(missing.stderr).toMatch(/^error: file: cannot read /m);
    expect(missing.status).toBe(2);
  });

  test('apply: one broken entry and one unknown node of three fail alone, naming why; the good one is started; exit 1', async () => {
    const file = path.join(stack().home, 'cli-jobs.yaml');
    fs.writeFileSync(
      file,
      [
        'jobs:',
        '  - name: cli-apply-bad',
        '    command: [sleep, "30"]',
        '    memory: 1e30',
        '  - name: cli-apply-nowhere',
        '    command: [sleep, "30"]',
        '    node: cli-nowhere',
        '  - name: cli-apply-good',
        '    command: [sleep, "30"]',
        `    node: ${NODE}`,
        '    memory: 64MiB',
      ].join('\n'),
    );
    const r = cli(['apply', '-f', file]);
    try {
      expect(r.stdout).toMatch(/^cli-apply-bad: failed: jobs\[0\]\.memory: must be at most 70368744177664 bytes/m);
      expect(r.stdout).toMatch(/^cli-apply-nowhere: failed: node: unknown node 'cli-nowhere'/m);
      expect(r.stdout).toMatch(/^cli-apply-good: applied: started \(job\/cli-apply-good\)$/m);
      expect(r.stdout).toMatch(/^3 jobs: 1 applied, 0 unchanged, 2 failed$/m);
      expect(r.status).toBe(1);
      expect(await workflowExists(jobWorkflowId('cli-apply-bad'))).toBe(false);
      expect(await workflowExists(jobWorkflowId('cli-apply-nowhere'))).toBe(false);
      const good = await k.client.workflow.getHandle(jobWorkflowId('cli-apply-good')).describe();
      expect(good.type).toBe('job');
      // Started once: applying again never starts a second one beside it.
      const again = cli(['apply', '-f', file]);
      expect(again.stdout).toMatch(/^cli-apply-good: (unchanged|failed: exists)/m);
      expect(again.status).toBe(1);
    } finally {
      // Cancel (the job workflow cleans up after itself), and terminate what does not end (a workflow without a worker).
      const h = k.client.workflow.getHandle(jobWorkflowId('cli-apply-good'));
      await h.cancel().catch(() => undefined);
      const ended = await until(
        'cli-apply-good ended',
        async () => (await h.describe()).status.name !== 'RUNNING',
        30000,
        1000,
      ).catch(() => false);
      if (!ended) await h.terminate('test cleanup').catch(() => undefined);
    }
  });
});
