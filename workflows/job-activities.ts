import type { NodeActivities } from '../activities/node';

/** The node activities of a job run as the job workflow calls them (implemented in activities/node/job-run.ts). */
export type JobNodeActivities = Pick<
  NodeActivities,
  'startRun' | 'awaitRunExit' | 'stopRun' | 'attachRunLimits' | 'archiveRunLog' | 'collectDiagnostics' | 'inspectRun'
>;
