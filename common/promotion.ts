/** Pure types of a node's promotion loop (`promote/<node>`), shared with clients and tests. */

/** A checkpoint S3 refused (S3Rejected): tried again on its own backoff, never blocking the ones behind it. */
export interface DeferredPromotion {
  checkpointId: string;
  attempts: number;
  /** Workflow time (ms) of the next try. */
  retryAt: number;
  lastError: string;
}

export interface PromotionStatus {
  node: string;
  pending: string[];
  promoted: string[];
  deferred: DeferredPromotion[];
  lastError: string | null;
}
