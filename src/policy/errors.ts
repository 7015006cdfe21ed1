/**
 * Typed errors of policy. Validation: a file with any problem is rejected whole; the error lists
 * every problem found, each naming the file, the document, the field path and the reason.
 * @module
 */
import { codedErrorFamily } from '../errors/index.ts';

export type PolicyErrorCode =
  /** A policy file with problems (`PolicyValidationError`, whose issues list them). */
  | 'ERR_POLICY_INVALID'
  /** No policy with the key asked for. */
  | 'ERR_POLICY_NOT_FOUND'
  /** A policy revision was not enforced in the time given; the code predates the family, clients know it. */
  | 'ERR_TIMEOUT';

/** An error of policy; `PolicyError.is(e, code?)` is exact. */
export class PolicyError extends codedErrorFamily<PolicyErrorCode>('policy') {}

export interface PolicyIssue {
  /** The file as given to the loader (`<input>` for text without a name). */
  file: string;
  /** 1-based position of the YAML document in the file (`---` separated). */
  document: number;
  /** Field path inside the document, e.g. `spec.ingress[0].toPorts[0].ports[0].port`; '' = whole document. */
  path: string;
  reason: string;
  /** `Kind namespace/name` of the policy, when known. */
  policy?: string;
}

/** One line per issue: `file: document N (Kind ns/name): path: reason`. */
export function formatIssue(issue: PolicyIssue): string {
  const doc = issue.policy === undefined ? `document ${issue.document}` : `document ${issue.document} (${issue.policy})`;
  return issue.path === '' ? `${issue.file}: ${doc}: ${issue.reason}` : `${issue.file}: ${doc}: ${issue.path}: ${issue.reason}`;
}

/** Every problem of a rejected file; `details` carries them (`{ issues }`) to API clients. */
export class PolicyValidationError extends PolicyError {
  override readonly code = 'ERR_POLICY_INVALID';
  readonly issues: readonly PolicyIssue[];

  constructor(issues: PolicyIssue[]) {
    super('ERR_POLICY_INVALID', issues.map(formatIssue).join('\n'), { details: { issues } });
    this.issues = issues;
  }

  /** Whether `value` is a PolicyValidationError; works across copies of the module. */
  static override is(value: unknown): value is PolicyValidationError {
    return PolicyError.is(value, 'ERR_POLICY_INVALID') && Array.isArray((value as PolicyValidationError).issues);
  }
}
