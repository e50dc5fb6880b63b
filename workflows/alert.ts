import { defineQuery, setCurrentDetails, setHandler, upsertSearchAttributes } from '@temporalio/workflow';
import type { AlertRecord } from '../common/alert';
import { STATUS_QUERY } from '../common/outcome';
import { SA_CHECKPOINT, SA_NODE } from '../common/search-attributes';

export type { AlertRecord } from '../common/alert';

export const alertQuery = defineQuery<AlertRecord>('alert');
/** The same record under the name every workflow answers. */
export const alertStatusQuery = defineQuery<AlertRecord>(STATUS_QUERY);

/** An alert is a closed workflow (`alert/<kind>/<id>`): durable, searchable in the UI, queryable. */
export async function alert(record: AlertRecord): Promise<AlertRecord> {
  upsertSearchAttributes([
    { key: SA_CHECKPOINT, value: record.checkpointId },
    { key: SA_NODE, value: record.node },
  ]);
  setHandler(alertQuery, () => record);
  setHandler(alertStatusQuery, () => record);
  setCurrentDetails(`${record.kind} on ${record.node}: ${record.message}`);
  return record;
}
