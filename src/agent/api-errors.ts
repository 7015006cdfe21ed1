/**
 * Errors as the agent's API answers them. Domain code raises its own coded errors (store,
 * identity, IPAM, policy, endpoints, …) and knows nothing of HTTP; this module holds the one
 * table from (family, code) to HTTP status, the API's own request errors, and `parseRequest`,
 * the one place a request body is validated into a 400.
 *
 * The table is keyed by family, not by code alone: two families may share a code
 * (ERR_BAD_REQUEST, ERR_NOT_FOUND) and still answer differently. Every code of a family must
 * have a status — the compiler checks it — so a new code cannot silently become a 500.
 * @module
 */
import type { z } from 'zod';
import { CodedError, codedErrorFamily } from '../errors/index.ts';
import { IdentityError } from '../identity/errors.ts';
import { IpamError } from '../ipam/errors.ts';
import { ServiceError } from '../loadbalancer/errors.ts';
import { PolicyError } from '../policy/errors.ts';
import { RuntimeError } from '../runtime/errors.ts';
import { StoreError } from '../store/errors.ts';
import { NetlinkError } from '../datapath/netlink/index.ts';
import { NodeRoutingError } from '../datapath/node-routing.ts';
import { ConfigError } from './config.ts';
import { EndpointError, NamespaceError, NodeError } from './errors.ts';

export type RequestErrorCode =
  /** A body, parameter or query that does not validate; the message names the field. */
  | 'ERR_BAD_REQUEST'
  /** A body that is not JSON. */
  | 'ERR_BAD_JSON'
  /** A body over the size limit. */
  | 'ERR_TOO_LARGE'
  /** No route for the method and path, or no such resource behind a route parameter. */
  | 'ERR_NOT_FOUND';

/** A request the API refuses before any domain code runs: its shape, not the state, is wrong. */
export class RequestError extends codedErrorFamily<RequestErrorCode>('request') {}

/**
 * `value` (a request body, or query parameters as an object) parsed by `schema`, or a
 * RequestError ERR_BAD_REQUEST naming `what` was asked and the first bad field's path.
 *
 * @example
 * const { yaml, file } = parseRequest(ImportBody, body, 'policy import');
 * // throws: "policy import: field yaml: Invalid input: expected string, received undefined"
 */
export function parseRequest<S extends z.ZodType>(schema: S, value: unknown, what: string): z.output<S> {
  const parsed = schema.safeParse(value);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  throw new RequestError('ERR_BAD_REQUEST', `${what}: field ${issue.path.map(String).join('.') || '(body)'}: ${issue.message}`, { cause: parsed.error });
}

export type HttpStatus = 400 | 404 | 409 | 413 | 500 | 503 | 504 | 507;

interface FamilyStatuses {
  readonly is: (value: unknown) => boolean;
  readonly statuses: Readonly<Record<string, HttpStatus>>;
}

/** One family's row of the table; `statuses` must name every code of the family. */
function family<Code extends string>(
  errorClass: { readonly prototype: { readonly code: Code }; is(value: unknown): boolean },
  statuses: { readonly [C in NoInfer<Code>]: HttpStatus },
): FamilyStatuses {
  return { is: (value) => errorClass.is(value), statuses };
}

/**
 * The one table from error to HTTP status. The rule: not found → 404; exists, conflict, in use
 * → 409; invalid, bad request, validation → 400; exhausted → 507; locked or unavailable → 503;
 * timed out → 504; the agent's own faults (datapath, configuration, a corrupt store) → 500.
 */
const HTTP_STATUS: readonly FamilyStatuses[] = [
  family(RequestError, { ERR_BAD_REQUEST: 400, ERR_BAD_JSON: 400, ERR_TOO_LARGE: 413, ERR_NOT_FOUND: 404 }),
  family(EndpointError, {
    ERR_ENDPOINT_EXISTS: 409,
    ERR_ENDPOINT_NOT_FOUND: 404,
    ERR_ENDPOINT_AMBIGUOUS: 409,
    ERR_BAD_NETNS: 400,
    ERR_BAD_LABELS: 400,
    ERR_ENDPOINTS_EXHAUSTED: 507,
    ERR_DATAPATH: 500,
  }),
  family(NamespaceError, { ERR_BAD_NAMESPACE: 400 }),
  family(NodeError, { ERR_NODE_NOT_FOUND: 404, ERR_NODE_IS_SELF: 409, ERR_NODE_CONFLICT: 409, ERR_BAD_REQUEST: 400, ERR_NODE_HEALTH_LISTEN: 500 }),
  family(ServiceError, {
    ERR_SERVICE_INVALID: 400,
    ERR_SERVICE_EXISTS: 409,
    ERR_SERVICE_NOT_FOUND: 404,
    ERR_CLUSTER_IP_IN_USE: 409,
    ERR_NODE_PORT_IN_USE: 409,
    ERR_SERVICE_EXHAUSTED: 507,
    ERR_BACKEND_NOT_FOUND: 404,
    ERR_SERVICE_CONFLICT: 409,
  }),
  family(PolicyError, { ERR_POLICY_INVALID: 400, ERR_POLICY_NOT_FOUND: 404, ERR_TIMEOUT: 504 }),
  family(RuntimeError, { ERR_RUNTIME_FILTER: 400, ERR_RUNTIME_POLICY: 400, ERR_RUNTIME_POLICY_NOT_FOUND: 404, ERR_RUNTIME_LISTEN: 500, ERR_RUNTIME_SENSOR: 503 }),
  family(IdentityError, {
    ERR_IDENTITY_INVALID_LABELS: 400,
    ERR_IDENTITY_INVALID_CIDR: 400,
    ERR_IDENTITY_INVALID_ARGUMENT: 400,
    ERR_IDENTITY_EXHAUSTED: 507,
    ERR_IDENTITY_NOT_REFERENCED: 409,
    ERR_IDENTITY_CONFLICT: 409,
    ERR_IDENTITY_NOT_FOUND: 404,
  }),
  family(IpamError, {
    ERR_IPAM_EXHAUSTED: 507,
    ERR_IPAM_DUPLICATE_OWNER: 409,
    ERR_IPAM_ADDRESS_IN_USE: 409,
    ERR_IPAM_RESERVED: 400,
    ERR_IPAM_OUT_OF_RANGE: 400,
    ERR_IPAM_INVALID_CIDR: 400,
    // The agent's configuration, not the request, is wrong.
    ERR_IPAM_INVALID_CONFIG: 500,
    ERR_IPAM_INVALID_ARGUMENT: 400,
    ERR_IPAM_CONFLICT: 409,
    ERR_IPAM_IN_USE: 409,
  }),
  family(StoreError, {
    ERR_STORE_CONFLICT: 409,
    ERR_STORE_LOCKED: 503,
    ERR_STORE_COMPACTED: 500,
    ERR_STORE_CORRUPT: 500,
    // Closed: the agent is stopping.
    ERR_STORE_CLOSED: 503,
    ERR_STORE_INVALID_ARGUMENT: 400,
    ERR_STORE_IO: 500,
    ERR_STORE_UNAVAILABLE: 503,
    // The node's own files are damaged or of another format: the agent's problem, not the request's.
    ERR_STORE_TRUNCATED: 500,
    ERR_STORE_FORMAT: 500,
    // etcd refused this agent's certificate or credentials: etcd is, for the agent, unavailable.
    ERR_STORE_TLS: 503,
    ERR_STORE_AUTH: 503,
  }),
  family(ConfigError, { ERR_CONFIG: 500 }),
  family(NetlinkError, { ERR_NETLINK: 500 }),
  family(NodeRoutingError, { ERR_NODE_ROUTING: 500 }),
];

/** The status the API answers `error` with; 500 for anything the table does not know (the eBPF library's errors included). */
export function httpStatus(error: unknown): HttpStatus {
  if (!CodedError.is(error)) return 500;
  const row = HTTP_STATUS.find((r) => r.is(error));
  return row?.statuses[error.code] ?? 500;
}

export interface ErrorBody {
  error: { code: string; message: string; details?: unknown };
}

/** The JSON body of an error answer: the error's own code (ERR_INTERNAL when it has none), message and details. */
export function errorBody(error: unknown): ErrorBody {
  const coded = error as { code?: unknown; message?: unknown; details?: unknown };
  const code = typeof coded?.code === 'string' ? coded.code : 'ERR_INTERNAL';
  const message = String(coded?.message ?? error);
  return { error: { code, message, ...(CodedError.is(error) && error.details !== undefined ? { details: error.details } : {}) } };
}
