import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { inspect } from 'node:util';
import { IllegalStateError } from '@temporalio/common';
import { DefaultLogger, type LogEntry, makeTelemetryFilterString, Runtime } from '@temporalio/worker';

/**
 * Where the Temporal SDK's own logs go in tests: worker state changes, "Activity failed" warnings for failures a
 * test provokes on purpose, core's notes about the test server. Under the run's test home (test/global-setup.ts;
 * KYBERNATE_KEEP_TEST_HOME=1 keeps it after the run), so that the console shows jest's results and nothing else.
 * A test that fails still says why on the console: the SDK rethrows what stops a worker into the test.
 */
export function sdkLogFile(): string {
  const home = process.env.KYBERNATE_HOME ?? path.join(os.tmpdir(), 'kybernate-test-logs');
  return path.join(home, 'logs', 'temporal-sdk.log');
}

let installed = false;

/**
 * Installs this test file's Temporal Runtime (one per jest module registry) with a logger that appends to
 * sdkLogFile(), and with core's own logs (which otherwise go straight to stderr) forwarded to it. Must run
 * before the first worker, connection or test environment of the file; later calls do nothing.
 */
export function quietTemporalRuntime(): void {
  if (installed) return;
  const file = sdkLogFile();
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const write = (entry: LogEntry): void => {
    const at = new Date(Number(entry.timestampNanos / 1_000_000n)).toISOString();
    const meta =
      entry.meta && Object.keys(entry.meta).length
        ? ` ${inspect(entry.meta, { depth: 4, breakLength: Infinity })}`
        : '';
    fs.appendFileSync(file, `${at} ${entry.level} ${entry.message}${meta}\n`);
  };
  try {
    Runtime.install({
      logger: new DefaultLogger('INFO', write),
      telemetryOptions: {
        logging: { filter: makeTelemetryFilterString({ core: 'INFO', other: 'WARN' }), forward: {} },
      },
    });
  } catch (e) {
    // Something in this file made a worker or connection first: it keeps the default (console) runtime.
    if (!(e instanceof IllegalStateError)) throw e;
  }
  installed = true;
}
