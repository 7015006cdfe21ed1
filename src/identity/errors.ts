/**
 * Typed errors of the identity subsystem. Every error has a stable `code` so callers (the
 * endpoint manager, the CLI, policy) branch on codes, never on message text. Messages start with
 * "identity: " and name the label, identity or CIDR involved and the reason.
 * @module
 */
import { codedErrorFamily } from '../errors/index.ts';

export type IdentityErrorCode =
  /** A label or label set that cannot become an identity (bad syntax, unknown source, mixed reserved labels…). */
  | 'ERR_IDENTITY_INVALID_LABELS'
  /** A CIDR that does not parse. */
  | 'ERR_IDENTITY_INVALID_CIDR'
  /** A malformed node name, identity number or option. */
  | 'ERR_IDENTITY_INVALID_ARGUMENT'
  /** Every number of the allocation range is taken. */
  | 'ERR_IDENTITY_EXHAUSTED'
  /** `release` of an identity this node holds no reference to. */
  | 'ERR_IDENTITY_NOT_REFERENCED'
  /** Other writers kept winning the compare-and-swap; retrying did not help. */
  | 'ERR_IDENTITY_CONFLICT'
  /** No identity with the number asked for. */
  | 'ERR_IDENTITY_NOT_FOUND';

/** An error of the identity subsystem; `IdentityError.is(e, code?)` is exact. */
export class IdentityError extends codedErrorFamily<IdentityErrorCode>('identity') {}

/**
 * A label (or label set) was refused. `label` is the offending label as written (or the whole
 * set for set-level problems), `reason` says why.
 *
 * @example
 * // identity: invalid label 'k8s:app=we b': value must be empty or 1–63 characters [A-Za-z0-9-_.] starting and ending alphanumeric
 */
export class InvalidLabelsError extends IdentityError {
  readonly label: string;
  readonly reason: string;

  constructor(label: string, reason: string) {
    super('ERR_IDENTITY_INVALID_LABELS', `identity: invalid label ${JSON.stringify(label)}: ${reason}`);
    this.label = label;
    this.reason = reason;
  }
}

/** The allocation range `[min, max]` has no free number left. */
export class IdentityExhaustedError extends IdentityError {
  readonly min: number;
  readonly max: number;
  readonly used: number;

  constructor(scope: string, min: number, max: number, used: number, labels: string) {
    super(
      'ERR_IDENTITY_EXHAUSTED',
      `identity: cannot allocate an identity for ${JSON.stringify(labels)}: ${scope} identity range ${min}–${max} is exhausted (${used} in use); ` +
        `run garbage collection or reduce identity-relevant labels`,
    );
    this.min = min;
    this.max = max;
    this.used = used;
  }
}
