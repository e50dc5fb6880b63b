// Everything the control worker's workflow bundle registers.
export { checkpoint } from './checkpoint';
export { promotion } from './promotion';
export { nodeRegistry } from './node';
export { runWorkload, stopWorkload } from './workload';
export { restore } from './restore';
export { migrate } from './migrate';
export { placement } from './placement';
export { alert } from './alert';
export { readJobLog } from './job-log';
export { job } from './job';
export { preemptionSweep } from './sweep';
export { admission } from './admission';
export { chunkGc, scheduledChunkGc } from './chunk-gc';
