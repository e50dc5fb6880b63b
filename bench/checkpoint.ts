import * as fs from 'node:fs';
import * as path from 'node:path';
import { listFiles } from '../activities/node/seal';
import { BIN } from '../deploy/local/paths';
import { checkpointWorkflowId } from '../common/queues';
import { durableAt } from '../common/checkpoint';
import {
  activityTimes,
  benchStack,
  dropCaches,
  run,
  secs,
  startPattern,
  table,
  timed,
  uploadBaseline,
} from './harness';

/**
 * Request-to-Durable of the checkpoint workflow against a by-hand baseline of the same steps run one after
 * the other (criu dump, sha256sum, upload with the SDK's lib-storage), on the same stack in the same run;
 * and against the slowest of those stages alone (dump or upload), which is as fast as overlapping the
 * stages could ever make it; and against the upload of the same bytes alone (issue 14 §1: with the pages
 * images hashed while they stream, integrity adds nothing to the critical path beyond that upload).
 */
async function main(): Promise<void> {
  const sizes = (process.env.KYBERNATE_BENCH_GIB ?? '1,4').split(',').map(Number);
  const { state, k, close } = await benchStack(['bench-a']);
  const rows = [
    [
      'process memory',
      'workflow (request->Durable s3)',
      '(->memory freed)',
      'baseline (dump; sha256sum; upload)',
      '  dump',
      '  sha256sum',
      '  upload',
      'ratio',
      'workflow / slowest stage',
      'workflow / upload alone',
    ],
  ];
  const breakdown: string[] = [];
  try {
    for (const gib of sizes) {
      const mib = Math.round(gib * 1024);
      // Baseline: the same kind of process, dumped, hashed and uploaded by hand.
      const b = await startPattern(k, 'bench-a', `base-${gib}`, mib);
      dropCaches();
      const dir = path.join(state.home, 'baseline', `g${gib}`);
      fs.mkdirSync(dir, { recursive: true });
      const [, dumpMs] = await timed(async () =>
        run(BIN.criu, ['dump', '-t', String(b.pid), '-D', dir, '-o', 'dump.log']),
      );
      const files = listFiles(dir).filter((f) => f.endsWith('.img'));
      const [, hashMs] = await timed(async () =>
        run(
          'sha256sum',
          files.map((f) => path.join(dir, f)),
        ),
      );
      const [, upMs] = await timed(async () => uploadBaseline(state, dir, files, `baseline/g${gib}/`));
      const baseline = dumpMs + hashMs + upMs;

      const w = await startPattern(k, 'bench-a', `wf-${gib}`, mib);
      dropCaches();
      const t0 = Date.now();
      const [s, doneMs] = await timed(async () => {
        const { request } = await k.startCheckpoint({
          target: `wf-${gib}`,
          node: 'bench-a',
          checkpointId: `wf-${gib}-ck`,
        });
        return k.checkpointResult(request.checkpointId);
      });
      if (s.phase !== 'Durable') throw new Error(`checkpoint ended ${s.phase}: ${s.failureReason}`);
      const wfMs = (durableAt(s) ?? Date.now()) - t0;
      void w;
      breakdown.push(
        `${gib} GiB: ${await activityTimes(k, checkpointWorkflowId(`wf-${gib}-ck`))}; ${s.history.find((h) => h.phase === 'DumpingProcess')?.detail}`,
      );
      rows.push([
        `${gib} GiB`,
        secs(wfMs),
        secs(doneMs),
        secs(baseline),
        secs(dumpMs),
        secs(hashMs),
        secs(upMs),
        (wfMs / baseline).toFixed(2),
        (wfMs / Math.max(dumpMs, upMs)).toFixed(2),
        (wfMs / upMs).toFixed(2),
      ]);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  } finally {
    await close();
  }
  table(
    'checkpoint: request to Durable on S3 (MinIO on loopback), ratio = workflow / baseline; target <= 1.0; slowest stage = max(dump, upload); upload alone = the same bytes uploaded with lib-storage (issue 14 §1 target)',
    rows,
  );
  console.log(`workflow activities (scheduled to completed, >= 50 ms):\n  ${breakdown.join('\n  ')}`);
}

main().catch((e: unknown) => {
  console.error(`bench failed: ${(e as Error).stack}`);
  process.exit(1);
});
