/**
 * The runtime sensor's errors, with stable codes.
 * @module
 */
import { codedErrorFamily } from '../errors/index.ts';

export type RuntimeErrorCode =
  /** A GetEvents filter (or a `ciliate runtime events` flag) that cannot be used: names the field. */
  | 'ERR_RUNTIME_FILTER'
  /** A TracingPolicy that is malformed or needs what this kernel lacks: `details` lists every problem. */
  | 'ERR_RUNTIME_POLICY'
  /** DeleteTracingPolicy of a name no loaded policy has. */
  | 'ERR_RUNTIME_POLICY_NOT_FOUND'
  /** The gRPC listener could not bind. */
  | 'ERR_RUNTIME_LISTEN'
  /** The sensor's BPF object could not be loaded or attached. */
  | 'ERR_RUNTIME_SENSOR';

export class RuntimeError extends codedErrorFamily<RuntimeErrorCode>('runtime') {}
