import { TestWorkflowEnvironment } from '@temporalio/testing';
import { temporal } from '@temporalio/proto';
import { ALL_SEARCH_ATTRIBUTES } from '../../common/search-attributes';
import { BIN } from '../../deploy/local/paths';
import { quietTemporalRuntime } from '../support/sdk-log';

/**
 * Temporal's Java test server with time skipping, provisioned by deploy/local/provision.sh (no download at
 * run time), with our search attributes registered as the dev server has them.
 */
export async function timeSkippingEnv(): Promise<TestWorkflowEnvironment> {
  quietTemporalRuntime(); // before the environment makes the runtime: SDK logs to a file, not the console
  const env = await startWithRetries();
  await env.connection.operatorService.addSearchAttributes({
    namespace: env.namespace ?? 'default',
    searchAttributes: Object.fromEntries(
      ALL_SEARCH_ATTRIBUTES.map((k) => [k.name, temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD]),
    ),
  });
  return env;
}

/**
 * The SDK gives the JVM a fixed 5 s to accept connections and kills it otherwise; on a loaded 2-core machine a
 * cold JVM can take longer. Each try warms the page cache for the next, so a few tries are enough.
 */
async function startWithRetries(tries = 10): Promise<TestWorkflowEnvironment> {
  for (let i = 1; ; i++) {
    try {
      return await TestWorkflowEnvironment.createTimeSkipping({
        server: { executable: { type: 'existing-path', path: BIN.testServer } },
      });
    } catch (e) {
      if (i >= tries || !/did not start within/.test((e as Error).message)) throw e;
    }
  }
}
