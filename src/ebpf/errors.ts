/**
 * Typed errors of the eBPF library. Every error has a stable `code`; kernel errnos are mapped to
 * these once, at the syscall boundary, so callers never compare errno numbers themselves.
 * @module
 */
import { constants } from 'node:os';
import { Errno } from './internal/constants.ts';

export type BpfErrorCode =
  | 'ERR_BPF'
  | 'ERR_PERMISSION'
  | 'ERR_NOT_SUPPORTED'
  | 'ERR_VERIFIER'
  | 'ERR_KEY_NOT_EXIST'
  | 'ERR_KEY_EXIST'
  | 'ERR_MAP_FULL'
  | 'ERR_INVALID_ARGUMENT'
  | 'ERR_NOT_FOUND'
  | 'ERR_BUSY'
  | 'ERR_STALE_REVISION'
  | 'ERR_ELF'
  | 'ERR_CODEC'
  /** A pinned map that no longer has the shape the object defines (a newer build changed it). */
  | 'ERR_PIN_MISMATCH';

const ERRNO_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(Errno).map(([name, value]) => [value, name]),
);
ERRNO_NAMES[Errno.ENOTSUP] = 'EOPNOTSUPP';
ERRNO_NAMES[Errno.ENOTSUPP_KERNEL] = 'ENOTSUPP';

// Every other errno by the name Node knows it by (first name wins over its aliases).
const OS_ERRNO_NAMES = new Map<number, string>();
for (const [name, value] of Object.entries(constants.errno)) if (!OS_ERRNO_NAMES.has(value)) OS_ERRNO_NAMES.set(value, name);

/** An errno's name: EPERM, EOPNOTSUPP, the kernel-internal ENOTSUPP (524), … */
export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? OS_ERRNO_NAMES.get(errno) ?? `errno ${errno}`;
}

/**
 * Ciliate's coded errors name their family under this key on their prototype (see src/errors);
 * the eBPF library imports nothing from Ciliate, so it repeats the key, and BpfError is family "bpf".
 */
const FAMILY = Symbol.for('ciliate.error.family');

export class BpfError extends Error {
  readonly code: BpfErrorCode;
  readonly errno: number | undefined;

  static {
    Object.defineProperty(this.prototype, FAMILY, { value: 'bpf', enumerable: false });
  }

  constructor(code: BpfErrorCode, message: string, options?: { errno?: number; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.errno = options?.errno;
  }

  /**
   * Whether `value` is a BpfError (optionally with this code); works across copies of the library.
   * Exact: another family's error with the same code (an API "ERR_NOT_FOUND") is not one.
   */
  static is(value: unknown, code?: BpfErrorCode): value is BpfError {
    return (
      typeof value === 'object' &&
      value !== null &&
      (value as { [FAMILY]?: unknown })[FAMILY] === 'bpf' &&
      (code === undefined || (value as BpfError).code === code)
    );
  }
}

/** A kernel feature this kernel does not have. Message: "not supported on this kernel: <feature>". */
export class NotSupportedError extends BpfError {
  readonly feature: string;
  constructor(feature: string, options?: { errno?: number; cause?: unknown; detail?: string; context?: string }) {
    const detail = options?.detail ? ` (${options.detail})` : '';
    // With a context (an operation the kernel refused) the operation leads, as in every other error.
    const message = options?.context ? `${options.context}: not supported on this kernel${detail}` : `not supported on this kernel: ${feature}${detail}`;
    super('ERR_NOT_SUPPORTED', message, options);
    this.feature = feature;
  }
}

export class PermissionError extends BpfError {
  constructor(context: string, errno: number) {
    const hint =
      process.getuid?.() === 0
        ? 'the kernel refused it even for root (lockdown, an LSM, or a missing capability)'
        : 'eBPF needs root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON): run as root';
    super('ERR_PERMISSION', `${context}: ${errnoName(errno)}: ${hint}`, { errno });
  }
}

/** A program the verifier rejected; `log` holds the verifier's own explanation. */
export class VerifierError extends BpfError {
  readonly log: string;
  readonly program: string;
  constructor(program: string, errno: number, log: string) {
    const tail = lastLines(log, 12);
    super(
      'ERR_VERIFIER',
      `loading program ${program}: verifier rejected it (${errnoName(errno)})${tail ? `:\n${tail}` : ''}`,
      { errno },
    );
    this.program = program;
    this.log = log;
  }
}

function lastLines(text: string, count: number): string {
  const lines = text.trimEnd().split('\n');
  return lines.slice(-count).join('\n');
}

/**
 * Turns a failed syscall's errno into a typed error. `context` says what was being done
 * ("updating map ct4_global"), and leads the message.
 */
export function errorFromErrno(context: string, errno: number): BpfError {
  switch (errno) {
    case Errno.EPERM:
    case Errno.EACCES:
      return new PermissionError(context, errno);
    case Errno.ENOENT:
      return new BpfError('ERR_NOT_FOUND', `${context}: ${errnoName(errno)}`, { errno });
    case Errno.EEXIST:
      return new BpfError('ERR_KEY_EXIST', `${context}: already exists (EEXIST)`, { errno });
    case Errno.E2BIG:
      return new BpfError('ERR_MAP_FULL', `${context}: map is full (E2BIG)`, { errno });
    case Errno.EINVAL:
      return new BpfError('ERR_INVALID_ARGUMENT', `${context}: invalid argument (EINVAL)`, { errno });
    case Errno.EBUSY:
      return new BpfError('ERR_BUSY', `${context}: busy (EBUSY)`, { errno });
    case Errno.ESTALE:
      return new BpfError('ERR_STALE_REVISION', `${context}: expected revision is stale (ESTALE)`, { errno });
    case Errno.EOPNOTSUPP:
    case Errno.ENOTSUPP_KERNEL:
    case Errno.ENOSYS:
      return new NotSupportedError(context, { errno, detail: errnoName(errno), context });
    default:
      return new BpfError('ERR_BPF', `${context}: ${errnoName(errno)}`, { errno });
  }
}
