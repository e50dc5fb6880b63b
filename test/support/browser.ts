import * as fs from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { type Browser, chromium, type Page } from 'playwright-core';
import { REPO_ROOT } from '../../deploy/local/paths';

/** Debian's Chromium, installed by deploy/local/provision.sh (component `chromium`); never a downloaded browser. */
export const CHROMIUM = '/usr/bin/chromium';

/** Where UI tests leave their screenshots (ignored by git). */
export const ARTIFACTS = path.join(REPO_ROOT, 'test-artifacts');

/**
 * Runs `fn` with a headless Chromium and closes the browser whatever happens, so a failed or timed-out test
 * never leaves a browser process keeping jest (and CI) alive.
 */
export async function withBrowser<T>(fn: (browser: Browser) => Promise<T>): Promise<T> {
  if (!fs.existsSync(CHROMIUM))
    throw new Error(
      `${CHROMIUM} is missing: run deploy/local/provision.sh chromium (as root) or apt-get install -y --no-install-recommends chromium`,
    );
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Root (as the tests run, for CRIU) cannot use Chromium's setuid/user-namespace sandbox; /dev/shm may be
    // small in containers.
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
    timeout: 30000,
  });
  try {
    return await fn(browser);
  } finally {
    await browser.close();
  }
}

/** A screenshot path under test-artifacts/, its directory made. */
export function artifactPath(name: string): string {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  return path.join(ARTIFACTS, name);
}

/**
 * Waits until some frame of the page shows text matching `text`: the Temporal UI renders user metadata (a
 * workflow's summary and current details) as markdown inside iframes, which page-level locators do not enter.
 */
export async function frameShows(page: Page, text: RegExp, timeoutMs = 20000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  const seen: string[] = [];
  while (Date.now() < deadline) {
    seen.length = 0;
    for (const f of page.frames()) {
      if (f === page.mainFrame()) continue;
      const t = await f
        .locator('body')
        .innerText({ timeout: 2000 })
        .catch(() => '');
      if (text.test(t)) return t;
      seen.push(t);
    }
    await sleep(250);
  }
  throw new Error(
    `timed out after ${timeoutMs} ms waiting for a frame showing ${text}; frames showed ${JSON.stringify(seen)}`,
  );
}
