/**
 * Hubble's flow messages as plain objects: the shape protobufjs encodes and decodes (field
 * names in lowerCamelCase, enums by name, 64-bit integers as decimal strings), which is also
 * the JSON `hubble observe -o json` prints.
 * @module
 */

export type Verdict = 'VERDICT_UNKNOWN' | 'FORWARDED' | 'DROPPED' | 'ERROR' | 'AUDIT' | 'REDIRECTED' | 'TRACED' | 'TRANSLATED';
export const VERDICTS: readonly Verdict[] = ['VERDICT_UNKNOWN', 'FORWARDED', 'DROPPED', 'ERROR', 'AUDIT', 'REDIRECTED', 'TRACED', 'TRANSLATED'];

export type TrafficDirection = 'TRAFFIC_DIRECTION_UNKNOWN' | 'INGRESS' | 'EGRESS';
export const TRAFFIC_DIRECTIONS: readonly TrafficDirection[] = ['TRAFFIC_DIRECTION_UNKNOWN', 'INGRESS', 'EGRESS'];

/** Hubble's TraceObservationPoint names by number (TO_ENDPOINT is 101 there). */
export const TRACE_OBSERVATION_POINTS: Readonly<Record<number, string>> = {
  0: 'UNKNOWN_POINT',
  1: 'TO_PROXY',
  2: 'TO_HOST',
  3: 'TO_STACK',
  4: 'TO_OVERLAY',
  101: 'TO_ENDPOINT',
  5: 'FROM_ENDPOINT',
  6: 'FROM_PROXY',
  7: 'FROM_HOST',
  8: 'FROM_STACK',
  9: 'FROM_OVERLAY',
  10: 'FROM_NETWORK',
  11: 'TO_NETWORK',
  12: 'FROM_CRYPTO',
  13: 'TO_CRYPTO',
};

export const TRACE_REASONS = ['TRACE_REASON_UNKNOWN', 'NEW', 'ESTABLISHED', 'REPLY', 'RELATED'] as const;

export type LostEventSource = 'UNKNOWN_LOST_EVENT_SOURCE' | 'PERF_EVENT_RING_BUFFER' | 'OBSERVER_EVENTS_QUEUE' | 'HUBBLE_RING_BUFFER';

export interface Timestamp {
  /** int64 as a decimal string. */
  seconds: string;
  nanos: number;
}

export interface Workload {
  name?: string;
  kind?: string;
}

export interface FlowEndpoint {
  ID?: number;
  identity?: number;
  clusterName?: string;
  namespace?: string;
  /** `source:key=value`, e.g. `k8s:org=empire`, `reserved:world`. */
  labels?: string[];
  podName?: string;
  workloads?: Workload[];
}

export interface TcpFlags {
  FIN?: boolean;
  SYN?: boolean;
  RST?: boolean;
  PSH?: boolean;
  ACK?: boolean;
  URG?: boolean;
  ECE?: boolean;
  CWR?: boolean;
  NS?: boolean;
}
export const TCP_FLAG_KEYS = ['FIN', 'SYN', 'RST', 'PSH', 'ACK', 'URG', 'ECE', 'CWR', 'NS'] as const satisfies readonly (keyof TcpFlags)[];

export interface Layer4 {
  TCP?: { sourcePort?: number; destinationPort?: number; flags?: TcpFlags };
  UDP?: { sourcePort?: number; destinationPort?: number };
  SCTP?: { sourcePort?: number; destinationPort?: number };
  ICMPv4?: { type?: number; code?: number };
  ICMPv6?: { type?: number; code?: number };
  /** The oneof's case, set by protobufjs when decoding. */
  protocol?: string;
}

export interface FlowPolicy {
  name?: string;
  namespace?: string;
  labels?: string[];
  /** uint64 as a decimal string. */
  revision?: string;
  kind?: string;
}

export interface Flow {
  time?: Timestamp;
  uuid?: string;
  emitter?: { name?: string; version?: string };
  verdict?: Verdict;
  dropReason?: number;
  ethernet?: { source?: string; destination?: string };
  IP?: { source?: string; destination?: string; ipVersion?: 'IP_NOT_USED' | 'IPv4' | 'IPv6'; encrypted?: boolean };
  l4?: Layer4;
  source?: FlowEndpoint;
  destination?: FlowEndpoint;
  Type?: 'UNKNOWN_TYPE' | 'L3_L4' | 'L7' | 'SOCK';
  nodeName?: string;
  eventType?: { type?: number; subType?: number };
  trafficDirection?: TrafficDirection;
  policyMatchType?: number;
  traceObservationPoint?: string;
  traceReason?: string;
  /** A DropReason name, or its number when the enum has no name for it. */
  dropReasonDesc?: string | number;
  isReply?: { value?: boolean };
  interface?: { index?: number; name?: string };
  /** Deprecated in flow.proto (100000), yet what hubble's compact output shows in parentheses. */
  Summary?: string;
  egressAllowedBy?: FlowPolicy[];
  ingressAllowedBy?: FlowPolicy[];
  egressDeniedBy?: FlowPolicy[];
  ingressDeniedBy?: FlowPolicy[];
  /** Fields this build never fills, present in flows from other Hubble servers. */
  sourceNames?: string[];
  destinationNames?: string[];
  sourceService?: { name?: string; namespace?: string };
  destinationService?: { name?: string; namespace?: string };
  l7?: {
    type?: string;
    /** uint64 as a decimal string. */
    latencyNs?: string;
    http?: { code?: number; method?: string; url?: string; protocol?: string; headers?: { key?: string; value?: string }[] };
    dns?: { query?: string; ips?: string[]; ttl?: number; cnames?: string[]; observationSource?: string; rcode?: number; qtypes?: string[]; rrtypes?: string[] };
  };
}

export interface LostEvent {
  source: LostEventSource;
  /** uint64 as a decimal string. */
  numEventsLost: string;
  cpu?: { value: number };
}

export interface GetFlowsResponse {
  flow?: Flow;
  lostEvents?: LostEvent;
  nodeStatus?: { stateChange?: string; nodeNames?: string[]; message?: string };
  nodeName?: string;
  time?: Timestamp;
  responseTypes?: 'flow' | 'lostEvents' | 'nodeStatus';
}

export interface EventTypeFilter {
  type?: number;
  matchSubType?: boolean;
  subType?: number;
}

/** Hubble's FlowFilter: every field set must match (AND); each field's values are ORed. */
export interface FlowFilter {
  uuid?: string[];
  sourceIp?: string[];
  sourcePod?: string[];
  sourceFqdn?: string[];
  sourceLabel?: string[];
  sourceService?: string[];
  sourceWorkload?: Workload[];
  sourceClusterName?: string[];
  destinationIp?: string[];
  destinationPod?: string[];
  destinationFqdn?: string[];
  destinationLabel?: string[];
  destinationService?: string[];
  destinationWorkload?: Workload[];
  destinationClusterName?: string[];
  trafficDirection?: (string | number)[];
  verdict?: (string | number)[];
  dropReasonDesc?: (string | number)[];
  eventType?: EventTypeFilter[];
  httpStatusCode?: string[];
  protocol?: string[];
  sourcePort?: string[];
  destinationPort?: string[];
  reply?: boolean[];
  dnsQuery?: string[];
  sourceIdentity?: number[];
  destinationIdentity?: number[];
  httpMethod?: string[];
  httpPath?: string[];
  httpUrl?: string[];
  httpHeader?: { key?: string; value?: string }[];
  tcpFlags?: TcpFlags[];
  nodeName?: string[];
  ipVersion?: (string | number)[];
  traceId?: string[];
  encrypted?: boolean[];
}

export interface GetFlowsRequest {
  number?: string | number;
  first?: boolean;
  follow?: boolean;
  blacklist?: FlowFilter[];
  whitelist?: FlowFilter[];
  since?: Timestamp;
  until?: Timestamp;
}

export interface ServerStatusResponse {
  numFlows: string;
  maxFlows: string;
  seenFlows: string;
  uptimeNs: string;
  numConnectedNodes?: { value: number };
  numUnavailableNodes?: { value: number };
  unavailableNodes?: string[];
  version: string;
  flowsRate: number;
  /** Ciliate's addition (field 150001, ignored by stock clients): loss so far, by stage. */
  ciliateLostEvents?: LostEvent[];
}

/** A Timestamp from nanoseconds since the epoch. */
export function timestampFromNs(ns: bigint): Timestamp {
  return { seconds: String(ns / 1_000_000_000n), nanos: Number(ns % 1_000_000_000n) };
}

/** Nanoseconds since the epoch of a Timestamp (seconds may arrive as a string or a number). */
export function timestampToNs(ts: { seconds?: string | number; nanos?: number }): bigint {
  return BigInt(ts.seconds ?? 0) * 1_000_000_000n + BigInt(ts.nanos ?? 0);
}
