/**
 * Typed errors of the agent's own domains: endpoints, namespaces and node deregistration. The
 * domain code raises these; only the API layer (api-errors.ts) decides which HTTP status each
 * code answers with. Some codes predate the families and keep their old spelling
 * (ERR_BAD_NETNS, ERR_BAD_LABELS, ERR_DATAPATH, ERR_BAD_REQUEST): clients and scripts match on them.
 * @module
 */
import { codedErrorFamily } from '../errors/index.ts';

export type EndpointErrorCode =
  /** The container already has an endpoint on that interface. */
  | 'ERR_ENDPOINT_EXISTS'
  /** No endpoint with that id, container/interface key or pod. */
  | 'ERR_ENDPOINT_NOT_FOUND'
  /** A container id (or a prefix of one) that matches several endpoints. */
  | 'ERR_ENDPOINT_AMBIGUOUS'
  /** The request names a network namespace that does not exist. */
  | 'ERR_BAD_NETNS'
  /** Pod labels that cannot become an identity. */
  | 'ERR_BAD_LABELS'
  /** Every endpoint id of this node is taken. */
  | 'ERR_ENDPOINTS_EXHAUSTED'
  /** The datapath did not realize the endpoint (programs, links or map entries). */
  | 'ERR_DATAPATH';

/** An endpoint the endpoint manager cannot add, find or relabel. */
export class EndpointError extends codedErrorFamily<EndpointErrorCode>('endpoint') {}

export type NamespaceErrorCode =
  /** A namespace name that is no DNS-1123 label, or labels it cannot carry. */
  'ERR_BAD_NAMESPACE';

/** Namespace labels that cannot be set. */
export class NamespaceError extends codedErrorFamily<NamespaceErrorCode>('namespace') {}

export type NodeErrorCode =
  /** The store holds nothing of the node. */
  | 'ERR_NODE_NOT_FOUND'
  /** The node to deregister is the one the answering agent runs as. */
  | 'ERR_NODE_IS_SELF'
  /** The node's keys kept changing while it was being deregistered. */
  | 'ERR_NODE_CONFLICT'
  /** A malformed node name (the code the API answered with before this family existed). */
  | 'ERR_BAD_REQUEST'
  /** The health responder cannot listen on the node address (port taken, address gone). */
  | 'ERR_NODE_HEALTH_LISTEN';

/** A node that cannot be deregistered, or whose health cannot be served. */
export class NodeError extends codedErrorFamily<NodeErrorCode>('node') {}
