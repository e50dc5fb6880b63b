/** An alert as its workflow (`alert/<kind>/<id>`) records it; shared with the control activity that raises it. */
export interface AlertRecord {
  kind: string;
  checkpointId: string;
  node: string;
  message: string;
  raisedAt: string;
}
