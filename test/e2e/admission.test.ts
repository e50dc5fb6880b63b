import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import type { KybernateClient } from '../../clients/api';
import { AdmissionRefusedError } from '../../clients/errors';
import type { AdmissionConfig } from '../../common/admission';
import { ADMISSION_WORKFLOW_ID, DEFAULT_ADMISSION_CONFIG } from '../../common/admission';
import { jobWorkflowId } from '../../common/job';
import { client, PYTHON, stack, until } from '../support/stack';
import { recordHistory } from '../support/histories';

/**
 * Admission on the real stack: the admission workflow started by the first request, asked through the client
 * library and the CLI, the backlog settled by the job workflows' own signal when they end.
 */
const CLI = path.resolve(__dirname, '../../dist/clients/cli.js');
const TiB = 1024 ** 4;

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    env: { ...process.env, KYBERNATE_HOME: stack().home },
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

let k: KybernateClient;
beforeAll(async () => {
  k = await client();
});
afterAll(async () => k?.close());

test('a flood of priority-10 requests is refused past the backlog limit while priority 0 goes through', async () => {
  const tag = Date.now().toString(36);
  const started: string[] = [];
  // Jobs no node can place (16 TiB of VRAM): they stay Pending, admitted-but-unplaced, until cancelled.
  const unplaceable = (jobId: string, priority: number) => ({
    jobId,
    command: [PYTHON, '-c', 'pass'],
    vramBytes: 16 * TiB,
    limits: {},
    priority,
    tier: 'normal' as const,
    restartPolicy: 'Never' as const,
    maxRestarts: 0,
    backoff: { initialMs: 10_000, capMs: 300_000, resetAfterMs: 600_000 },
  });
  // Other suites of this run may have work waiting: the limit is set 3 above what waits now.
  const before = await k.admissionStatus(); // null: nothing has asked admission yet in this run
  const previous: AdmissionConfig = before?.config ?? DEFAULT_ADMISSION_CONFIG;
  const base = before?.backlog ?? 0;
  try {
    // Degraded kept out of the way: this test is about the backlog limit alone.
    await k.configureAdmission({ backlogLimit: base + 3, degradedBacklog: 100_000 });
    const flood = Array.from({ length: 8 }, (_, i) => `adm-${tag}-p10-${i}`);
    const outcomes = await Promise.allSettled(
      flood.map(async (id) => {
        await k.jobs.start(unplaceable(id, 10));
        started.push(id);
      }),
    );
    const refused = outcomes.filter((o): o is PromiseRejectedResult => o.status === 'rejected').map((o) => o.reason);
    expect(started).toHaveLength(3);
    expect(refused).toHaveLength(5);
    for (const e of refused) {
      expect(e).toBeInstanceOf(AdmissionRefusedError);
      const r = e as AdmissionRefusedError;
      expect(r.code).toBe('ADMISSION_REFUSED');
      expect(r.message).toMatch(/backlog limit of \d+.*retry in \d+ s/);
      expect(r.refusal).toMatchObject({ reason: 'backlog', backlogLimit: base + 3, priority: 10 });
    }
    // The singleton never ends: its history so far is what replay.test.ts replays.
    await recordHistory('admission-flood', k.client.workflow.getHandle(ADMISSION_WORKFLOW_ID));
    // Nothing was started for a refused request.
    const refusedIds = flood.filter((id) => !started.includes(id));
    const desc = await k.client.workflow
      .getHandle(jobWorkflowId(refusedIds[0]))
      .describe()
      .catch((e: Error) => e);
    expect(desc).toBeInstanceOf(Error);

    // Priority 0 goes through the same full backlog.
    const critical = `adm-${tag}-p0`;
    await k.jobs.start(unplaceable(critical, 0));
    started.push(critical);

    // The CLI says the same, with its stable code, and exits 1 having started nothing.
    const viaCli = cli(['run', `adm-${tag}-cli`, '--priority', '10', '--vram', '16TiB', '--json', '--', PYTHON]);
    expect(viaCli.status).toBe(1);
    expect(JSON.parse(viaCli.stderr).error).toMatchObject({
      code: 'ADMISSION_REFUSED',
      message: expect.stringMatching(/retry in/),
    });
    const st = cli(['status', '--json']);
    const doc = JSON.parse(st.stdout) as { admission: { mode: string; backlog: number; config: AdmissionConfig } };
    expect(doc.admission).toMatchObject({ mode: 'Normal', config: { backlogLimit: base + 3 } });
    expect(doc.admission.backlog).toBeGreaterThanOrEqual(base + 4);
  } finally {
    // Cancelled, each job settles its entry itself (the job workflow's signal): the backlog falls back.
    for (const id of started) await k.cancel(id, { wait: false }).catch(() => undefined);
    await k.configureAdmission({ backlogLimit: previous.backlogLimit, degradedBacklog: previous.degradedBacklog });
  }
  await until(
    'the cancelled jobs leave the backlog',
    async () => ((await k.admissionStatus())?.backlog ?? 0) <= base || null,
    60_000,
    500,
  );
}, 120_000);
