/**
 * The coded-error base of Ciliate. Every error family (store, identity, IPAM, policy, endpoints,
 * …) extends `codedErrorFamily(name)` with its own union of stable codes, so `Family.is(value,
 * code?)` is exact: an error of one family is never taken for another, whatever its code looks
 * like. Only the family mark decides, never a code prefix.
 *
 * The mark is a property keyed by `Symbol.for(…)` on the family's prototype, so it holds across
 * two copies of a module (a bundled CLI next to the agent's own copy) where `instanceof` fails.
 *
 * This module imports nothing: the CNI plugin loads it on every container start.
 * @module
 */

/** The property (on a family's prototype) that names the family. Shared with src/ebpf, which may not import it. */
const FAMILY = Symbol.for('ciliate.error.family');

export interface CodedErrorOptions {
  cause?: unknown;
  /** Structured detail for clients (the agent's API sends it as `error.details`), e.g. every problem of a rejected policy. */
  details?: unknown;
}

/**
 * The base of every Ciliate error: a stable `code`, a message that leads with what was being
 * done, and the `cause`. `name` is the concrete class's name. A family extends
 * `codedErrorFamily(…)`, not this class directly.
 */
export abstract class CodedError<Code extends string = string> extends Error {
  readonly code: Code;
  readonly details: unknown;

  constructor(code: Code, message: string, options?: CodedErrorOptions) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.details = options?.details;
  }

  /** Whether `value` is an error of any Ciliate family (the eBPF library's included), optionally with this code. */
  static is(value: unknown, code?: string): value is CodedError {
    return errorFamily(value) !== undefined && (code === undefined || (value as CodedError).code === code);
  }
}

/**
 * The root class of the error family `family`, whose codes are `Code`. Extend it once per family;
 * a family name belongs to one root. Its `is(value, code?)` is exact: true for errors of this
 * family (subclasses included, from any copy of the module), never for another family's error,
 * whatever its code.
 *
 * @example
 * export type StoreErrorCode = 'ERR_STORE_CONFLICT' | 'ERR_STORE_LOCKED';
 * export class StoreError extends codedErrorFamily<StoreErrorCode>('store') {}
 * StoreError.is(error, 'ERR_STORE_CONFLICT'); // an IpamError 'ERR_IPAM_CONFLICT' is not one
 */
export function codedErrorFamily<Code extends string>(family: string) {
  abstract class FamilyRoot extends CodedError<Code> {
    static {
      Object.defineProperty(this.prototype, FAMILY, { value: family, enumerable: false });
    }

    /** Whether `value` is an error of this family (optionally with this code), exactly, across copies of the module. */
    static override is(value: unknown, code?: Code): value is FamilyRoot {
      return errorFamily(value) === family && (code === undefined || (value as FamilyRoot).code === code);
    }
  }
  return FamilyRoot;
}

/** The family of a coded error, from whichever copy of its module made it; undefined for anything else. */
export function errorFamily(value: unknown): string | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const family = (value as { [FAMILY]?: unknown })[FAMILY];
  return typeof family === 'string' && typeof (value as { code?: unknown }).code === 'string' ? family : undefined;
}
