/**
 * CNI error codes (CNI spec 1.0, "Error" and 1.1 STATUS codes) and the error JSON a plugin prints.
 * @module
 */
import { codedErrorFamily } from '../errors/index.ts';

export const CniErrorCode = {
  INCOMPATIBLE_VERSION: 1,
  UNSUPPORTED_FIELD: 2,
  UNKNOWN_CONTAINER: 3,
  INVALID_ENVIRONMENT: 4,
  IO_FAILURE: 5,
  DECODING_FAILURE: 6,
  INVALID_NETWORK_CONFIG: 7,
  TRY_AGAIN_LATER: 11,
  PLUGIN_NOT_AVAILABLE: 50,
  LIMITED_CONNECTIVITY: 51,
  /** Plugin-specific codes start at 100. */
  AGENT_ERROR: 100,
} as const;
export type CniErrorCode = (typeof CniErrorCode)[keyof typeof CniErrorCode];

/** A CNI error: `cniCode` is the spec's number the runtime sees, `code` the family's one stable code. */
export class CniError extends codedErrorFamily<'ERR_CNI'>('cni') {
  readonly cniCode: CniErrorCode;
  override readonly details: string;

  constructor(code: CniErrorCode, msg: string, details = '') {
    super('ERR_CNI', msg);
    this.cniCode = code;
    this.details = details;
  }

  toJSON(cniVersion: string): { cniVersion: string; code: number; msg: string; details?: string } {
    return { cniVersion, code: this.cniCode, msg: this.message, ...(this.details ? { details: this.details } : {}) };
  }
}
