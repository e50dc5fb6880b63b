import { type Client, WithStartWorkflowOperation } from '@temporalio/client';
import {
  ADMISSION_ENV,
  ADMISSION_SUMMARY,
  ADMISSION_WORKFLOW_ID,
  type AdmissionConfig,
  admissionConfigProblem,
  type AdmissionStatus,
} from '../common/admission';
import { CONTROL_QUEUE } from '../common/queues';
import { admission, configureUpdate } from '../workflows/admission';

/** The admission settings set in the environment (KYBERNATE_ADMISSION_*); a bad one throws naming its variable. */
export function admissionConfigFromEnv(env: NodeJS.ProcessEnv): Partial<AdmissionConfig> {
  const out: Partial<AdmissionConfig> = {};
  for (const [key, name] of Object.entries(ADMISSION_ENV) as [keyof AdmissionConfig, string][]) {
    const raw = env[name];
    if (raw === undefined || raw === '') continue;
    const n = /^[0-9]+$/.test(raw) ? Number(raw) : NaN;
    const bad = admissionConfigProblem({ [key]: n });
    if (bad) throw new Error(`${name}: ${bad.replace(/^[^:]+: /, '').replace(/ \(got [^)]*\)$/, '')} (got '${raw}')`);
    out[key] = n;
  }
  return out;
}

/** Applies settings to the admission workflow, starting it if it is not running; retried until it lands. */
export async function applyAdmissionConfig(client: Client, patch: Partial<AdmissionConfig>): Promise<AdmissionStatus> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await client.workflow.executeUpdateWithStart(configureUpdate, {
        args: [patch],
        startWorkflowOperation: new WithStartWorkflowOperation(admission, {
          workflowId: ADMISSION_WORKFLOW_ID,
          taskQueue: CONTROL_QUEUE,
          args: [{}],
          workflowIdConflictPolicy: 'USE_EXISTING',
          staticSummary: ADMISSION_SUMMARY,
        }),
      });
    } catch (e) {
      if (attempt >= 10) throw e;
      await new Promise((r) => setTimeout(r, Math.min(30_000, 1000 * 2 ** attempt)).unref());
    }
  }
}
