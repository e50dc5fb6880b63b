import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';

/** Custom search attributes registered on the Temporal server so the UI can filter by them. */
export const SA_JOB = defineSearchAttributeKey('KybernateJobId', SearchAttributeType.KEYWORD);
export const SA_NODE = defineSearchAttributeKey('KybernateNode', SearchAttributeType.KEYWORD);
export const SA_PHASE = defineSearchAttributeKey('KybernatePhase', SearchAttributeType.KEYWORD);
export const SA_TIER = defineSearchAttributeKey('KybernateTier', SearchAttributeType.KEYWORD);
export const SA_CHECKPOINT = defineSearchAttributeKey('KybernateCheckpointId', SearchAttributeType.KEYWORD);

export const ALL_SEARCH_ATTRIBUTES = [SA_JOB, SA_NODE, SA_PHASE, SA_TIER, SA_CHECKPOINT] as const;
