/**
 * Errors of the metrics servers.
 * @module
 */
import { codedErrorFamily } from '../errors/index.ts';

export type MetricsErrorCode = 'ERR_METRICS_LISTEN' | 'ERR_METRICS_OPTION';

export class MetricsError extends codedErrorFamily<MetricsErrorCode>('metrics') {}
