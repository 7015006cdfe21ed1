/**
 * One datapath event (trace, drop, policy verdict) into one Hubble Flow, named by workloads:
 * the endpoints on either side with their identity, namespace, pod and `source:key=value`
 * labels, the verdict, the drop reason, the headers, and the rules that decided.
 * @module
 */
import { randomUUID } from 'node:crypto';
import { DropReason, hubbleObservationPoint, MonitorEventType, TracePoint, type DatapathEvent } from '../datapath/index.ts';
import { PolicyDirection } from '../policy/index.ts';
import { flowSummary } from './printer.ts';
import { TRACE_OBSERVATION_POINTS, TRACE_REASONS, timestampFromNs, type Flow, type FlowEndpoint, type FlowPolicy, type Layer4, type TcpFlags, type TrafficDirection, type Workload } from './types.ts';

/** An endpoint (local, or a remote node's pod), as far as flows name it. */
export interface FlowEndpointInfo {
  /** The local endpoint id; 0 for another node's pod. */
  id: number;
  identity: number;
  namespace?: string;
  podName?: string;
  /** What runs the pod (its controller); each flow gets its own copy. */
  workload?: Readonly<Workload>;
}

/** What the observer asks the agent to name an event's numbers. */
export interface FlowNames {
  readonly nodeName: string;
  /** The local endpoint with this address. */
  endpointByAddress(address: string): FlowEndpointInfo | undefined;
  /** The local endpoint with this id. */
  endpointById(id: number): FlowEndpointInfo | undefined;
  /** An identity's labels as `source:key=value`; undefined when the identity is unknown here. */
  identityLabels(identity: number): readonly string[] | undefined;
  /** The rule a policy-map cookie stands for. */
  policyForCookie(cookie: number): FlowPolicy | undefined;
}

const NAMESPACE_LABEL = 'k8s:io.kubernetes.pod.namespace=';

const TCP_FLAG_BITS: readonly [keyof TcpFlags, number][] = [
  ['FIN', 0x01],
  ['SYN', 0x02],
  ['RST', 0x04],
  ['PSH', 0x08],
  ['ACK', 0x10],
  ['URG', 0x20],
  ['ECE', 0x40],
  ['CWR', 0x80],
];

function tcpFlags(bits: number): TcpFlags {
  const flags: TcpFlags = {};
  for (const [name, bit] of TCP_FLAG_BITS) if (bits & bit) flags[name] = true;
  return flags;
}

function endpoint(names: FlowNames, address: string | undefined, identity: number, reporter: number): FlowEndpoint {
  // Packets without an IPv4 header (IPv6 neighbour discovery, ARP) still name the endpoint
  // whose program reported them, on the side that endpoint is.
  const local = (address === undefined ? undefined : names.endpointByAddress(address)) ?? (reporter ? names.endpointById(reporter) : undefined);
  // The datapath may not know a local peer's identity (0) where the agent does.
  const id = identity !== 0 ? identity : (local?.identity ?? 0);
  const labels = names.identityLabels(id);
  const out: FlowEndpoint = { identity: id };
  if (local?.id) out.ID = local.id;
  if (labels) out.labels = [...labels];
  const namespace = local?.namespace ?? labels?.find((l) => l.startsWith(NAMESPACE_LABEL))?.slice(NAMESPACE_LABEL.length);
  if (namespace) out.namespace = namespace;
  if (local?.podName) out.podName = local.podName;
  if (local?.workload) out.workloads = [{ name: local.workload.name, kind: local.workload.kind }];
  return out;
}

function layer4(event: DatapathEvent): Layer4 | undefined {
  const l4 = event.packet.l4;
  if (!l4) return undefined;
  switch (l4.protocol) {
    case 'TCP':
      return { TCP: { sourcePort: l4.sourcePort, destinationPort: l4.destinationPort, flags: tcpFlags(l4.flags) } };
    case 'UDP':
      return { UDP: { sourcePort: l4.sourcePort, destinationPort: l4.destinationPort } };
    case 'ICMPv4':
      return { ICMPv4: { type: l4.type, code: l4.code } };
  }
}

/**
 * The direction from the endpoint's point of view: a reply seen entering an endpoint belongs
 * to a connection the endpoint opened, so it is egress traffic (as Hubble reports it).
 */
function traceDirection(event: DatapathEvent & { kind: 'trace' }): TrafficDirection {
  let ingress: boolean;
  if (event.observationPoint === TracePoint.TRACE_TO_LXC) ingress = true;
  else if (event.observationPoint === TracePoint.TRACE_FROM_LXC) ingress = false;
  else return 'TRAFFIC_DIRECTION_UNKNOWN';
  if (event.isReply) ingress = !ingress;
  return ingress ? 'INGRESS' : 'EGRESS';
}

function dropReasonDesc(code: number): string | number {
  return DropReason[code] ?? code;
}

/**
 * The Flow of one decoded event that happened at `timeNs` (ns since the epoch).
 *
 * @example
 * const flow = buildFlow(decodeEvent(record), monitor.wallClockNs(ts), names);
 * flow.verdict; // 'DROPPED'
 */
export interface FlowHints {
  /** For a policy drop: whether the policy that denied it was the destination's ingress policy. */
  policyIngress?: boolean;
}

export function buildFlow(event: DatapathEvent, timeNs: bigint, names: FlowNames, hints: FlowHints = {}): Flow {
  const ip = event.packet.ipv4;
  const reporter = event.kind === 'policy-verdict' ? event.endpointId : event.source;
  const ingress = event.kind === 'policy-verdict' ? event.direction === PolicyDirection.INGRESS : event.ingress;
  const flow: Flow = {
    time: timestampFromNs(timeNs),
    uuid: randomUUID(),
    Type: 'L3_L4',
    nodeName: names.nodeName,
    source: endpoint(names, ip?.source, event.srcIdentity, ingress ? 0 : reporter),
    destination: endpoint(names, ip?.destination, event.dstIdentity, ingress ? reporter : event.dstId),
    isReply: { value: event.isReply },
  };
  if (event.packet.ethernet) flow.ethernet = { source: event.packet.ethernet.source, destination: event.packet.ethernet.destination };
  if (ip) flow.IP = { source: ip.source, destination: ip.destination, ipVersion: 'IPv4' };
  const l4 = layer4(event);
  if (l4) flow.l4 = l4;
  if (event.ifindex) flow.interface = { index: event.ifindex };
  switch (event.kind) {
    case 'trace': {
      flow.verdict = 'FORWARDED';
      flow.eventType = { type: MonitorEventType.TRACE, subType: event.observationPoint };
      flow.traceObservationPoint = TRACE_OBSERVATION_POINTS[hubbleObservationPoint(event.observationPoint) ?? 0] ?? 'UNKNOWN_POINT';
      flow.traceReason = TRACE_REASONS[event.ctStatus + 1] ?? 'TRACE_REASON_UNKNOWN';
      flow.trafficDirection = traceDirection(event);
      break;
    }
    case 'drop':
      flow.verdict = 'DROPPED';
      flow.dropReason = event.reason;
      flow.dropReasonDesc = dropReasonDesc(event.reason);
      flow.eventType = { type: MonitorEventType.DROP, subType: event.reason };
      flow.trafficDirection = (hints.policyIngress ?? event.ingress) ? 'INGRESS' : 'EGRESS';
      break;
    case 'policy-verdict': {
      flow.eventType = { type: MonitorEventType.POLICY_VERDICT, subType: 0 };
      flow.trafficDirection = ingress ? 'INGRESS' : 'EGRESS';
      flow.policyMatchType = event.match;
      flow.verdict = event.allowed ? 'FORWARDED' : 'DROPPED';
      if (!event.allowed && event.dropReason) {
        flow.dropReason = event.dropReason;
        flow.dropReasonDesc = dropReasonDesc(event.dropReason);
      }
      const policy = event.cookie ? names.policyForCookie(event.cookie) : undefined;
      if (policy) {
        const field = event.allowed ? (ingress ? 'ingressAllowedBy' : 'egressAllowedBy') : ingress ? 'ingressDeniedBy' : 'egressDeniedBy';
        flow[field] = [policy];
      }
      break;
    }
  }
  // Deprecated in flow.proto, but what hubble's compact output prints in parentheses.
  flow.Summary = flowSummary(flow);
  return flow;
}
