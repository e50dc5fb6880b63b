import * as path from 'node:path';
import type { ConfigDefaults } from '../../workers/config';
import { BIN, defaultStackHome } from './paths';
import { configFromStack, readStackState } from './stack';

/** What an agent on this checkout uses when the environment names none: the provisioned binaries, data under the stack home. */
export interface LocalNodeDefaults {
  criuBin: string;
  initBin: string;
  shimBin: string;
  dataRoot: string;
}

/**
 * The local stack as configuration defaults: its Temporal and MinIO from the state file `kybernate up` wrote
 * (through the proxies `up --toxiproxy` routed S3 and Temporal through, so that a fault cut there reaches us),
 * and the provisioned binaries. The environment still wins over all of it (workers/config.ts).
 */
export function localDefaults(env: NodeJS.ProcessEnv = process.env): {
  config: ConfigDefaults;
  node: LocalNodeDefaults;
} {
  const state = readStackState(env.KYBERNATE_HOME || undefined);
  const fromStack = state ? configFromStack(state, true) : null;
  return {
    config: fromStack
      ? {
          temporalAddress: fromStack.temporalAddress,
          namespace: fromStack.namespace,
          uiUrl: fromStack.uiUrl,
          s3: fromStack.s3,
        }
      : {},
    node: { criuBin: BIN.criu, initBin: BIN.tini, shimBin: BIN.shim, dataRoot: path.join(defaultStackHome(), 'nodes') },
  };
}

export { joinLocalStack } from './join';
