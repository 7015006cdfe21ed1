/**
 * Validation errors of policy files. A file with any problem is rejected whole; the error lists
 * every problem found, each naming the file, the document, the field path and the reason.
 * @module
 */

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

export class PolicyValidationError extends Error {
  readonly code = 'ERR_POLICY_INVALID';
  readonly issues: readonly PolicyIssue[];

  constructor(issues: PolicyIssue[]) {
    super(issues.map(formatIssue).join('\n'));
    this.name = 'PolicyValidationError';
    this.issues = issues;
  }

  /** Whether `value` is a PolicyValidationError; works across copies of the module. */
  static is(value: unknown): value is PolicyValidationError {
    return value instanceof Error && (value as { code?: unknown }).code === 'ERR_POLICY_INVALID' && Array.isArray((value as PolicyValidationError).issues);
  }
}
