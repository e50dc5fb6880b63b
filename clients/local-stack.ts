/**
 * The local stack (deploy/local) as the CLI sees it: its commands (up, down, restart, fault, status) and the
 * defaults and registration a worker or agent started from this checkout gets. Only clients/cli.ts imports
 * this, and only lazily: deploy/local needs a repository checkout, which a production install is not.
 */
export {
  down,
  parseDownMs,
  parseStackComponent,
  restartComponent,
  startComponent,
  status,
  stopComponent,
  up,
} from '../deploy/local/stack';
export { defaultStackHome } from '../deploy/local/paths';
export { proxiedLinks, setFault } from '../deploy/local/faults';
export { startAgent, startControlWorker } from '../deploy/local/workers';
export { joinLocalStack, localDefaults } from '../deploy/local/config';
export { inLocalStack } from '../deploy/local/join';
export { freePort } from '../deploy/local/ports';
