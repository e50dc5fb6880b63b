export const CONTROL_QUEUE = 'kybernate-control';
export const nodeQueue = (node: string): string => `node/${node}`;

export const checkpointWorkflowId = (checkpointId: string): string => `checkpoint/${checkpointId}`;
export const restoreWorkflowId = (checkpointId: string, attempt: number): string =>
  `restore/${checkpointId}/${attempt}`;
export const nodeWorkflowId = (node: string): string => `node/${node}`;
export const promotionWorkflowId = (node: string): string => `promote/${node}`;
