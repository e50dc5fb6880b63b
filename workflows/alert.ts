import { defineQuery, setHandler, upsertSearchAttributes } from '@temporalio/workflow';
import { SA_CHECKPOINT, SA_NODE } from '../common/search-attributes';

export interface AlertRecord {
  kind: string;
  checkpointId: string;
  node: string;
  message: string;
  raisedAt: string;
}

export const alertQuery = defineQuery<AlertRecord>('alert');

/** An alert is a closed workflow (`alert/<kind>/<id>`): durable, searchable in the UI, queryable. */
export async function alert(record: AlertRecord): Promise<AlertRecord> {
  upsertSearchAttributes([{ key: SA_CHECKPOINT, value: record.checkpointId }, { key: SA_NODE, value: record.node }]);
  setHandler(alertQuery, () => record);
  return record;
}
