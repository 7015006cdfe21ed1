/**
 * Service load balancing: the service model and its validation, services in the shared store and
 * the frontends each node balances, and backend selection (Maglev).
 *
 * @example
 * const services = new ServiceManager({ store, limits: { serviceCidr: '10.96.0.0/16', nodePortRange: { min: 30000, max: 32767 } }, log });
 * await services.create(parseRequest(serviceRequestSchema(limits), body, 'service'));
 * @module
 */
export { ServiceError, type ServiceErrorCode } from './errors.ts';
export {
  BACKEND_STATES,
  PROTOCOL_NUMBER,
  SERVICE_PROTOCOLS,
  SERVICE_TYPES,
  backendName,
  namedPortsSchema,
  parseNamedPort,
  portNameSchema,
  frontendKey,
  selects,
  serviceFrontends,
  serviceKey,
  serviceRefSchema,
  serviceRequestSchema,
  type Backend,
  type BackendSource,
  type NamedPort,
  type NamedPortText,
  type BackendState,
  type ExplicitBackend,
  type Frontend,
  type FrontendKind,
  type Service,
  type ServicePort,
  type ServiceProtocol,
  type ServiceRequest,
  type ServiceRequestLimits,
  type ServiceType,
} from './service.ts';
export { ServiceManager, SERVICES_PREFIX, SERVICE_SPECS_PREFIX, type ServiceManagerOptions, type ServicePod } from './service-manager.ts';
export {
  DEFAULT_MAGLEV_HASH_SEED,
  DEFAULT_MAGLEV_TABLE_SIZE,
  MAGLEV_TABLE_SIZES,
  isMaglevTableSize,
  lb4TupleHash,
  maglevPermutation,
  maglevSeed,
  maglevTable,
  type MaglevBackend,
  type MaglevTableSize,
} from './maglev.ts';
export { murmur3x64_128 } from './murmur3.ts';
export { servicesFromManifest, type ManifestProblem } from './manifest.ts';
export { LbDatapath, type LbDatapathOptions, type LbEntry, type SockEndpointEntry } from './datapath.ts';
export { HostDatapath, HOST_OBJECT_PATH, HostProgram, resolveDevices, type HostDatapathOptions } from './host.ts';
export {
  BackendFlag,
  LB_MAGLEV_LUT_SIZE,
  LbMapName,
  LbSelection,
  ServiceFlag,
  SockProgram,
  SOCK_OBJECT_PATH,
  createMaglevInner,
  readMaglevInner,
  lb4Backend,
  lb4Key,
  lb4ReverseNat,
  lb4Service,
  lbMaps,
  loadSock,
  type Lb4Backend,
  type Lb4Key,
  type Lb4ReverseNat,
  type Lb4Service,
  type LbMaps,
  lb4Nat,
  NatKind,
  type Lb4Nat,
} from './maps.ts';
export { parseXdpLbConfig, readXdpLbConfig, vipKey, xdpLbConfigSchema, type XdpLbConfig, type XdpLbVipConfig } from './xdp-config.ts';
export { HealthChecker, tcpCheck, type HealthOptions, type HealthTarget } from './xdp-health.ts';
export { XdpLbDecap, XdpLoadBalancer, type XdpLbStats } from './xdp-lb.ts';
export { DEFAULT_LB_SOCKET, LbRunner, queryLb, type LbRunnerOptions } from './xdp-runner.ts';
export { XDP_LB_OBJECT_PATH, XdpLbMapName, XdpLbProgram, loadXdpLb, xdpLbMaps, type XdpLbMaps, type XlbFlow, type XlbConn } from './xdp-maps.ts';
