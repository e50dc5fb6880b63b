/**
 * How long a workflow may take to answer a query. Queries are answered by the control worker: with no worker
 * the call would block, so past this the CLI says the worker is not answering (or falls back to the record).
 */
export const QUERY_TIMEOUT_MS = 10000;
/** How long to wait for Temporal's frontend when connecting. */
export const CONNECT_TIMEOUT_MS = 5000;
/** How often a waiting client asks a workflow for its status (progress display, `watch`). */
export const WATCH_INTERVAL_MS = 1000;
