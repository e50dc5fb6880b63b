import { KybernateClient } from '../../clients/api';
import { checkpointWorkflowId } from '../../common/queues';
import { SA_JOB } from '../../common/search-attributes';
import { artifactPath, frameShows, withBrowser } from '../support/browser';
import { Agent, client, lastTick, PATTERN, PYTHON, stack, until } from '../support/stack';

let k: KybernateClient;
let agent: Agent | null = null;

beforeAll(async () => {
  k = await client();
});
afterAll(async () => {
  if (agent) await agent.stop();
  await k.close();
});

describe('the Temporal Web UI, in a real headless Chromium', () => {
  test("a job's checkpoint is found by KybernateJobId and its page shows id, type, status and phase", async () => {
    const node = 'e2e-ui';
    const job = 'ui-job';
    const checkpointId = 'ui-job-1';
    const wfId = checkpointWorkflowId(checkpointId);
    agent = await Agent.start({ node, declaredVramBytes: 8 * 2 ** 30 });
    const w = await k.runWorkload({ node, jobId: job, command: [PYTHON, PATTERN, '16', job] });
    await until(`${job} ticking`, () => lastTick(w.logFile) >= 1, 30000);
    await k.startCheckpoint({ target: job, node, checkpointId });
    const result = await k.checkpointResult(checkpointId);
    expect(result.phase).toBe('Durable');

    // The UI reads the same visibility store: wait until the list query the page will send finds the workflow,
    // and pick a workflow of the stack that has no KybernateJobId, which the filtered page must not show.
    const query = `${SA_JOB.name} = "${job}"`;
    const listed = async (q?: string): Promise<string[]> => {
      const ids: string[] = [];
      for await (const e of k.client.workflow.list(q ? { query: q } : {})) ids.push(e.workflowId);
      return ids;
    };
    await until('the checkpoint workflow in visibility', async () => (await listed(query)).includes(wfId), 20000);
    const jobIds = new Set(await listed(query));
    const other = (await listed()).find((id) => !jobIds.has(id));
    expect(other).toBeDefined(); // the agent's node workflow at least: the filter has something to leave out

    const shot = artifactPath('ui-checkpoint.png');
    const metadataShot = artifactPath('ui-checkpoint-metadata.png');
    const ui = stack().temporal.uiUrl;
    await withBrowser(async (browser) => {
      const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
      page.setDefaultTimeout(20000);
      await page.goto(`${ui}/namespaces/default/workflows?query=${encodeURIComponent(query)}`);
      // The filtered list: this job's checkpoint workflow, not the other one.
      const link = page.getByRole('link', { name: wfId, exact: true });
      await link.waitFor();
      for (const id of jobIds) await page.getByRole('link', { name: id, exact: true }).waitFor();
      await page.getByText(`${jobIds.size} Workflows`, { exact: true }).waitFor();
      expect(await page.getByText(other!, { exact: true }).count()).toBe(0);
      await page.screenshot({ path: artifactPath('ui-workflows-by-job.png'), fullPage: true });

      await link.click();
      await page.waitForURL(/\/workflows\/checkpoint%2Fui-job-1\//);
      await page.getByRole('heading', { name: wfId }).waitFor();
      await page.getByText('Completed', { exact: true }).first().waitFor(); // the status badge
      await page.getByRole('link', { name: 'checkpoint', exact: true }).waitFor(); // the workflow type
      // The phase, as the workflow's result shows it today.
      await page.getByText('"phase": "Durable"').first().waitFor();
      await page.getByText('"tier": "s3"').first().waitFor();
      await page.screenshot({ path: shot, fullPage: true });
      // UI 2.42 shows the start's staticSummary and the workflow's current details (read with a query the
      // control worker answers) under this tab.
      await page.getByText('User Metadata', { exact: true }).click();
      await frameShows(page, new RegExp(`^Checkpoint ${job} on ${node}$`));
      await frameShows(page, /^phase: Durable \(tier s3\)/);
      await page.screenshot({ path: metadataShot, fullPage: true });
    });
    process.stderr.write(`[ui.test] screenshots of the checkpoint workflow's page: ${shot}, ${metadataShot}\n`);
  });
});
