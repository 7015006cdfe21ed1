/**
 * Typed errors of services. Domain code raises these; the agent's API table (api-errors.ts)
 * decides each code's HTTP status.
 * @module
 */
import { codedErrorFamily } from '../errors/index.ts';

export type ServiceErrorCode =
  /** A manifest that is no valid Service, or asks for what is not supported; `details` lists every problem. */
  | 'ERR_SERVICE_INVALID'
  /** A service of that namespace and name exists already. */
  | 'ERR_SERVICE_EXISTS'
  /** No service of that namespace and name. */
  | 'ERR_SERVICE_NOT_FOUND'
  /** The requested ClusterIP belongs to another service. */
  | 'ERR_CLUSTER_IP_IN_USE'
  /** The requested node port (of that protocol) belongs to another service. */
  | 'ERR_NODE_PORT_IN_USE'
  /** Every address of the service CIDR, or every port of the node-port range, is taken. */
  | 'ERR_SERVICE_EXHAUSTED'
  /** The service has no explicit backend of that address. */
  | 'ERR_BACKEND_NOT_FOUND'
  /** The service changed between reading and writing it (another writer); trying again reads it anew. */
  | 'ERR_SERVICE_CONFLICT';

/** A service that cannot be created, found or deleted. */
export class ServiceError extends codedErrorFamily<ServiceErrorCode>('service') {}
