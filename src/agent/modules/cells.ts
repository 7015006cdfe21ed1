/**
 * What modules provide each other: the agent's wiring diagram. A module needs cells by name and
 * provides at most one; the agent starts a cell's provider before every module that needs it.
 * Only types are imported here, so any module can name any cell without importing its provider.
 * @module
 */
import type { EndpointDatapath, NodeRouting } from '../../datapath/index.ts';
import type { IdentityAllocator } from '../../identity/index.ts';
import type { NodeIpam } from '../../ipam/index.ts';
import type { L7DnsRecord, L7HttpRecord, L7Record } from '../../observer/index.ts';
import type { ServiceManager } from '../../loadbalancer/index.ts';
import type { HubbleMetricsSink } from '../../metrics/index.ts';
import type { StateStore } from '../../store/index.ts';
import type { AnswerAddress, HandledQuery, RejectResponseCode, Resolver } from '../../fqdn/index.ts';
import type { DnsVerdict } from '../../policy/index.ts';
import type { ApiServer } from '../api-server.ts';
import type { ClusterWatcher } from '../cluster.ts';
import type { EndpointManager } from '../endpoint-manager.ts';
import type { Ipcache } from '../ipcache.ts';
import { cell } from '../module.ts';
import type { Monitor } from '../monitor.ts';
import type { Namespaces } from '../namespaces.ts';
import type { NodeRecord } from '../node.ts';
import type { NodeReachability } from '../node-health.ts';
import type { PolicyManager } from '../policy-manager.ts';

export interface LocalNode {
  record: NodeRecord;
  ipam: NodeIpam;
  /** The cluster's pod addresses, of which this node's pod CIDR is a slice. */
  clusterCidr: string;
}

/** Provided by the agent itself: the API server every module adds routes to. */
export const ApiServerCell = cell<ApiServer>('api-server');
export const StoreCell = cell<StateStore>('store');
export const NodeCell = cell<LocalNode>('node');
export const IdentitiesCell = cell<IdentityAllocator>('identities');
/** The host device is up and holds the router address: routes may use it as their source. */
export const HostNetworkingCell = cell<{ device: string }>('host-networking');
export const EndpointDatapathCell = cell<EndpointDatapath>('endpoint-datapath');
export const NodeRoutingCell = cell<NodeRouting>('node-routing');
export const IpcacheCell = cell<Ipcache>('ipcache');
export const PolicyCell = cell<PolicyManager>('policy');
/** The DNS proxy (what the L7 redirect hands an endpoint's DNS queries to) and its L7 records, for the observer. */
export interface DnsProxyService extends L7RecordSource<L7DnsRecord> {
  /** How the proxy is configured, for one on another thread (the pod DNS redirect's). */
  readonly settings: { minTtl: number; rejectResponseCode: RejectResponseCode; forwardTimeoutMs: number; maxInFlight: number };
  /** What `endpoint`'s policy lets it ask `resolver` over `protocol`. */
  verdict(endpoint: number, resolver: Resolver, protocol: 'UDP' | 'TCP'): DnsVerdict;
  /** Allows the addresses an answer for `endpoint` holds, kept across restarts; the answer waits for it. */
  learned(endpoint: number, addresses: AnswerAddress[]): Promise<void>;
  /** The flows of a query a proxy on another thread handled. */
  report(query: HandledQuery): void;
  /** Calls `listener` synchronously whenever a verdict may have changed. */
  onVerdictInputsChange(listener: () => void): () => void;
  /** Calls `listener` synchronously when learned addresses left the FQDN cache before they expired. */
  onEvict(listener: () => void): () => void;
}
export const DnsProxyCell = cell<DnsProxyService>('dns-proxy');
export const NamespacesCell = cell<Namespaces>('namespaces');
export const EndpointsCell = cell<EndpointManager>('endpoints');
/** The datapath events ring's one reader, whose records the observer turns into flows. */
export const MonitorCell = cell<Monitor>('monitor');
/** Other nodes and their endpoints, as followed in the shared store. */
export const ClusterCell = cell<ClusterWatcher>('cluster');
/** Where the observer hands each flow for Hubble's metrics (a sink that ignores them when those are off). */
export const HubbleMetricsCell = cell<HubbleMetricsSink>('hubble-metrics');
/** Which other nodes answer this node's health probes; `unreachable()` is undefined with health checking off. */
export interface NodeHealthView {
  unreachable(): number | undefined;
  reachability(): NodeReachability[];
}
export const NodeHealthCell = cell<NodeHealthView>('node-health');
/** Services and the frontends this node balances. */
/** A proxy's L7 records (the node proxy's HTTP requests and responses, the DNS proxy's queries), for the observer. */
export interface L7RecordSource<R extends L7Record = L7HttpRecord> {
  onRecords(listener: (records: R[]) => void): () => void;
}
export const ProxyCell = cell<L7RecordSource>('l7-proxy');
export const ServicesCell = cell<ServiceManager>('services');
