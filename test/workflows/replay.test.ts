import * as path from 'node:path';
import { bundleWorkflowCode, type WorkflowBundleWithSourceMap, Worker } from '@temporalio/worker';
import { loadHistories } from '../support/histories';
import { quietTemporalRuntime } from '../support/sdk-log';

/** Histories recorded from e2e runs on the real stack, replayed against today's workflow code. */
describe('replay of recorded e2e histories', () => {
  const histories = loadHistories();
  // One bundle for every history: building it is most of a replay's time.
  let bundle: WorkflowBundleWithSourceMap;
  beforeAll(async () => {
    quietTemporalRuntime(); // the replay workers' state changes go to the SDK log file
    bundle = await bundleWorkflowCode({
      workflowsPath: path.resolve(__dirname, '../../workflows'),
      logger: {
        log: () => undefined,
        trace: () => undefined,
        debug: () => undefined,
        info: () => undefined,
        warn: () => undefined,
        error: () => undefined,
      },
    });
  }, 120000);

  test('histories from every e2e branch are committed', () => {
    expect(histories.map((h) => h.workflowId)).toEqual(
      expect.arrayContaining([
        'checkpoint-durable',
        'checkpoint-agent-killed',
        'checkpoint-enospc',
        'checkpoint-s3-outage',
        'checkpoint-upload-resumed',
        'migrate',
        'restore-oom-rescheduled',
        'restore-corrupt-s3',
        'checkpoint-staged-disk-full',
        'restore-staged',
        'chunk-gc-scheduled',
        'before-staging/checkpoint-durable',
        'before-staging/checkpoint-s3-outage',
        'before-staging/restore-corrupt-s3',
        'before-early-release/restore-staged',
        'before-zone-tallies/job-fenced',
        'before-zone-tallies/placement-eviction',
        'before-copy-per-attempt/restore-staged',
        'before-copy-per-attempt/restore-oom-rescheduled',
        'before-copy-per-attempt/restore-agent-killed',
        'checkpoint-left-running',
        'before-copy-after-upload/checkpoint-left-running',
        'restore-refused-open-job',
        'restore-s3-outage',
        'before-refuse-open-job/restore-staged',
        'before-refuse-open-job/restore-agent-killed',
        'migrate-refused-open-job',
        'job-migrated',
        'before-migrate-refuse-open-job/migrate',
        'checkpoint-refused-open-job',
      ]),
    );
  });

  test.each(histories.map((h) => [h.workflowId, h] as const))('%s replays deterministically', async (_name, h) => {
    await Worker.runReplayHistory({ workflowBundle: bundle }, h.history, h.workflowId);
  });
});
