/**
 * One datapath event (trace, drop, policy verdict) into one Hubble Flow, named by workloads:
 * the endpoints on either side with their identity, namespace, pod and `source:key=value`
 * labels, the verdict, the drop reason, the headers, and the rules that decided.
 * @module
 */
import { randomUUID } from 'node:crypto';
import {
  checkEventRecord,
  DropReason,
  DropReasonCode,
  dropEvent,
  EVENT_CAPTURE_LEN,
  eventHeader,
  EventFlag,
  hubbleObservationPoint,
  ipString,
  ipv4At,
  ipv4HeaderAt,
  IPPROTO_ICMP,
  IPPROTO_TCP,
  IPPROTO_UDP,
  l4HeaderAt,
  MonitorEventType,
  policyVerdictEvent,
  summarizePacket,
  type L4Summary,
  type RecordSlots,
  traceEvent,
  TracePoint,
} from '../datapath/index.ts';
import { FLOW_METRIC_TYPES, POLICY_MATCHES, traceSubtypeLabel, type FlowMetricEndpoint, type FlowMetricInput, type FlowMetricTcpFlags } from '../metrics/index.ts';
import { PolicyDirection, PolicyVerdict } from '../policy/index.ts';
import { ObserverError } from './errors.ts';
import { flowSummary } from './printer.ts';
import { TRACE_OBSERVATION_POINTS, TRACE_REASONS, timestampFromNs, type Flow, type FlowEndpoint, type FlowPolicy, type Layer4, type TcpFlags, type TrafficDirection, type Workload } from './types.ts';

/** An endpoint (local, or a remote node's pod), as far as flows name it. */
export interface FlowEndpointInfo {
  /** The local endpoint id; 0 for another node's pod. */
  id: number;
  identity: number;
  /** Its IPv4 address (local endpoints: what a flow of theirs known only by id is addressed from). */
  address?: string;
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

/**
 * One side of a flow as it was named when its event came: the local endpoint (or remote pod) at
 * its address or the one that reported it, and the identity with its labels.
 */
export function flowEndpoint(local: FlowEndpointInfo | undefined, identity: number, labels: readonly string[] | undefined): FlowEndpoint {
  const out: FlowEndpoint = { identity };
  if (local?.id) out.ID = local.id;
  if (labels) out.labels = [...labels];
  const namespace = endpointNamespace(local, labels);
  if (namespace) out.namespace = namespace;
  if (local?.podName) out.podName = local.podName;
  if (local?.workload) out.workloads = [{ name: local.workload.name, kind: local.workload.kind }];
  return out;
}

/** A side's namespace: its endpoint's, or its identity's namespace label. */
function endpointNamespace(local: FlowEndpointInfo | undefined, labels: readonly string[] | undefined): string | undefined {
  return local?.namespace ?? labels?.find((l) => l.startsWith(NAMESPACE_LABEL))?.slice(NAMESPACE_LABEL.length);
}

/** A side as the metrics name it: what flowEndpoint gives the Flow, the fields the contexts read. */
function metricEndpoint(local: FlowEndpointInfo | undefined, identity: number, labels: readonly string[] | undefined): FlowMetricEndpoint {
  return { namespace: endpointNamespace(local, labels) || undefined, podName: local?.podName || undefined, identity, workload: local?.workload?.name };
}

function layer4(l4: L4Summary | undefined): Layer4 | undefined {
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
function traceDirection(observationPoint: number, isReply: boolean): TrafficDirection {
  let ingress: boolean;
  if (observationPoint === TracePoint.TRACE_TO_LXC) ingress = true;
  else if (observationPoint === TracePoint.TRACE_FROM_LXC) ingress = false;
  else return 'TRAFFIC_DIRECTION_UNKNOWN';
  if (isReply) ingress = !ingress;
  return ingress ? 'INGRESS' : 'EGRESS';
}

function dropReasonDesc(code: number): string | number {
  return DropReason[code] ?? code;
}

/*
 * What a record says of its flow, read once here for the Flow (buildFlow) and the metrics
 * (metricInput): one definition of each.
 */

/** A policy verdict's direction is its own field; other events carry it in their flags. */
function recordIngress(record: Buffer, at: number, type: number, flags: number): boolean {
  return type === MonitorEventType.POLICY_VERDICT ? record[at + VERDICT.direction] === PolicyDirection.INGRESS : (flags & EventFlag.INGRESS) !== 0;
}

/** Whether a policy verdict allowed the packet. */
function verdictAllowed(record: Buffer, at: number): boolean {
  return record[at + VERDICT.verdict] === PolicyVerdict.ALLOWED;
}

/** The Flow's verdict: drops and denying verdicts drop, the rest forward. */
function recordVerdict(record: Buffer, at: number, type: number): 'FORWARDED' | 'DROPPED' {
  return type === MonitorEventType.DROP || (type === MonitorEventType.POLICY_VERDICT && !verdictAllowed(record, at)) ? 'DROPPED' : 'FORWARDED';
}

/** The drop reason a record carries (a drop's subtype, a denying verdict's field); 0 for none. */
function recordDropReason(record: Buffer, at: number, type: number): number {
  if (type === MonitorEventType.DROP) return record[at + HDR.subtype];
  return type === MonitorEventType.POLICY_VERDICT && !verdictAllowed(record, at) ? record[at + VERDICT.drop_reason] : 0;
}

/** The Flow's traffic direction; a policy drop's is the denying verdict's when it had one (FlowIngest's policyIngress). */
function recordDirection(record: Buffer, at: number, type: number, flags: number, policyIngress: boolean | undefined): TrafficDirection {
  if (type === MonitorEventType.TRACE) return traceDirection(record[at + HDR.subtype], (flags & EventFlag.REPLY) !== 0);
  return (policyIngress ?? recordIngress(record, at, type, flags)) ? 'INGRESS' : 'EGRESS';
}

/** A trace's observation point by its subtype, as Hubble names it. */
function traceObservationPoint(subtype: number): string {
  return TRACE_OBSERVATION_POINTS[hubbleObservationPoint(subtype) ?? 0] ?? 'UNKNOWN_POINT';
}

/**
 * The Flow of the checked record at `at` in `record`, whose event happened at `timeNs` (ns since
 * the epoch), its sides as `named` says. Reads the record's fields where they are (the offsets of
 * the codecs in datapath/events.ts) rather than decoding it into a DatapathEvent first: this is
 * what every reader of the buffer, and the metrics of every flow, pay.
 */
function buildFlow(record: Buffer, at: number, timeNs: bigint, uuid: string, nodeName: string, named: FlowEntry): Flow {
  const type = record[at + HDR.type];
  const flags = record[at + HDR.flags];
  const isReply = (flags & EventFlag.REPLY) !== 0;
  const capture = at + CAPTURE_AT[type];
  const packet = summarizePacket(record, capture, capture + Math.min(record.readUInt32LE(at + HDR.cap_len), EVENT_CAPTURE_LEN));
  const ip = packet.ipv4;
  const flow: Flow = {
    time: timestampFromNs(timeNs),
    uuid,
    Type: 'L3_L4',
    nodeName,
    source: flowEndpoint(named.sourceLocal, named.sourceIdentity, named.sourceLabels),
    destination: flowEndpoint(named.destinationLocal, named.destinationIdentity, named.destinationLabels),
    isReply: { value: isReply },
  };
  if (packet.ethernet) flow.ethernet = { source: packet.ethernet.source, destination: packet.ethernet.destination };
  if (ip) flow.IP = { source: ip.source, destination: ip.destination, ipVersion: 'IPv4' };
  const l4 = layer4(packet.l4);
  if (l4) flow.l4 = l4;
  const ifindex = record.readUInt32LE(at + HDR.ifindex);
  if (ifindex) flow.interface = { index: ifindex };
  const subtype = record[at + HDR.subtype];
  flow.verdict = recordVerdict(record, at, type);
  flow.trafficDirection = recordDirection(record, at, type, flags, named.policyIngress);
  // A drop's subtype is its reason; a verdict's subtype is 0.
  flow.eventType = { type, subType: type === MonitorEventType.POLICY_VERDICT ? 0 : subtype };
  const dropReason = recordDropReason(record, at, type);
  if (type === MonitorEventType.DROP || dropReason) {
    flow.dropReason = dropReason;
    flow.dropReasonDesc = dropReasonDesc(dropReason);
  }
  if (type === MonitorEventType.TRACE) {
    flow.traceObservationPoint = traceObservationPoint(subtype);
    // A trace's `reason` is its conntrack status.
    flow.traceReason = TRACE_REASONS[record[at + HDR.reason] + 1] ?? 'TRACE_REASON_UNKNOWN';
  } else if (type === MonitorEventType.POLICY_VERDICT) {
    flow.policyMatchType = record[at + VERDICT.match_type];
    const policy = named.policy;
    if (policy) {
      const allowed = verdictAllowed(record, at);
      const ingress = recordIngress(record, at, type, flags);
      const field = allowed ? (ingress ? 'ingressAllowedBy' : 'egressAllowedBy') : ingress ? 'ingressDeniedBy' : 'egressDeniedBy';
      flow[field] = [policy.labels ? { ...policy, labels: [...policy.labels] } : { ...policy }];
    }
  }
  // Deprecated in flow.proto, but what hubble's compact output prints in parentheses.
  flow.Summary = flowSummary(flow);
  return flow;
}

const METRIC_DIRECTIONS: Readonly<Record<TrafficDirection, 'ingress' | 'egress' | 'unknown'>> = { INGRESS: 'ingress', EGRESS: 'egress', TRAFFIC_DIRECTION_UNKNOWN: 'unknown' };
/** The `subtype` label of a trace by its subtype: the observation point, kebab-case. */
const TRACE_SUBTYPE_LABELS: readonly string[] = Array.from({ length: 256 }, (_, subtype) => traceSubtypeLabel(traceObservationPoint(subtype)));
/** The flags of each TCP flags byte, shared: the metrics only read them. */
const METRIC_TCP_FLAGS: readonly Readonly<FlowMetricTcpFlags>[] = Array.from({ length: 256 }, (_, bits) => Object.freeze(tcpFlags(bits)));

/**
 * What the Hubble metrics count of the checked record at `at`, read from the record and the
 * names its entry kept, without building its Flow: the same values flowMetricInput (src/metrics)
 * takes from the Flow, by the same helpers buildFlow uses (a test holds the two together). The
 * sides are made only when a metric reads them (a source or destination context): by default
 * none does.
 */
class EntryMetricInput implements FlowMetricInput {
  readonly type: FlowMetricInput['type'];
  readonly subtype: string | undefined;
  readonly verdict: string;
  readonly dropReason: string | undefined;
  readonly protocol: string | undefined;
  readonly ipVersion: 4 | undefined;
  readonly tcpFlags: FlowMetricTcpFlags | undefined;
  readonly trafficDirection: 'ingress' | 'egress' | 'unknown';
  readonly policyMatch: string | undefined;
  readonly destinationPort: number | undefined;
  readonly isReply: boolean;
  readonly #named: FlowEntry;
  #source: FlowMetricEndpoint | undefined;
  #destination: FlowMetricEndpoint | undefined;

  constructor(record: Buffer, at: number, named: FlowEntry) {
    const type = record[at + HDR.type];
    const flags = record[at + HDR.flags];
    const capture = at + CAPTURE_AT[type];
    const end = capture + Math.min(record.readUInt32LE(at + HDR.cap_len), EVENT_CAPTURE_LEN);
    const ip = ipv4HeaderAt(record, capture, end);
    const l4 = ip < 0 ? -1 : l4HeaderAt(record, ip, end);
    const l4Protocol = l4 < 0 ? 0 : record[ip + 9];
    const dropReason = recordDropReason(record, at, type);
    this.type = FLOW_METRIC_TYPES[type] ?? 'Unknown';
    this.subtype = type === MonitorEventType.TRACE ? TRACE_SUBTYPE_LABELS[record[at + HDR.subtype]] : undefined;
    this.verdict = recordVerdict(record, at, type);
    this.dropReason = type === MonitorEventType.DROP || dropReason ? DropReason[dropReason] : undefined;
    this.protocol = l4Protocol === IPPROTO_TCP ? 'TCP' : l4Protocol === IPPROTO_UDP ? 'UDP' : l4Protocol === IPPROTO_ICMP ? 'ICMPv4' : undefined;
    this.ipVersion = ip < 0 ? undefined : 4;
    this.tcpFlags = l4Protocol === IPPROTO_TCP ? METRIC_TCP_FLAGS[record[l4 + 13]] : undefined;
    this.trafficDirection = METRIC_DIRECTIONS[recordDirection(record, at, type, flags, named.policyIngress)];
    this.policyMatch = type === MonitorEventType.POLICY_VERDICT ? POLICY_MATCHES[record[at + VERDICT.match_type]] : undefined;
    this.destinationPort = l4Protocol === IPPROTO_TCP || l4Protocol === IPPROTO_UDP ? (record[l4 + 2] << 8) | record[l4 + 3] : undefined;
    this.isReply = (flags & EventFlag.REPLY) !== 0;
    this.#named = named;
  }

  get source(): FlowMetricEndpoint {
    const named = this.#named;
    return (this.#source ??= metricEndpoint(named.sourceLocal, named.sourceIdentity, named.sourceLabels));
  }

  get destination(): FlowMetricEndpoint {
    const named = this.#named;
    return (this.#destination ??= metricEndpoint(named.destinationLocal, named.destinationIdentity, named.destinationLabels));
  }
}

/**
 * What the flows of one observer share: how they are named, their clock, and their records,
 * each in the slot of its entry's sequence number (seq % slots), so a record lives exactly as
 * long as its entry.
 */
export interface FlowStore {
  readonly names: FlowNames;
  /** Nanoseconds since the epoch of an event's CLOCK_MONOTONIC timestamp: a fixed mapping. */
  wallClockNs(monotonicNs: bigint): bigint;
  readonly records: RecordSlots;
  /** Whether the buffer holds the entry (then the slot of its sequence number is its own). */
  holds(entry: FlowEntry): boolean;
}

const HDR = eventHeader.offsets;
const VERDICT = policyVerdictEvent.offsets;
/** Where each event type's captured packet starts. */
const CAPTURE_AT: Readonly<Record<number, number>> = {
  [MonitorEventType.TRACE]: traceEvent.offsets.data,
  [MonitorEventType.DROP]: dropEvent.offsets.data,
  [MonitorEventType.POLICY_VERDICT]: policyVerdictEvent.offsets.data,
};

/**
 * One flow in the buffer: its datapath record (in the store's slot of its sequence number), and
 * what its numbers were named as when it came (endpoints, identities' labels, the rule), which
 * is all the Flow message needs. The message itself is built when someone reads the flow
 * (GetFlows, an exporter, the metrics), afresh at each read, so a reader may keep or change what
 * it gets; its uuid is drawn at the first read and kept. Keeping the record rather than the
 * message is what lets the observer take a busy datapath's events at a few hundred nanoseconds
 * each, in a fraction of the memory: most flows are overwritten before anyone asks for them.
 */
export class FlowEntry {
  /** Numbered by the flow buffer; the record is in slot seq % slots of the store. */
  seq = 0;
  declare readonly lost?: undefined;
  readonly #store: FlowStore;
  #uuid: string | undefined;
  #timeNs: bigint | undefined;
  readonly sourceLocal: FlowEndpointInfo | undefined;
  readonly sourceIdentity: number;
  readonly sourceLabels: readonly string[] | undefined;
  readonly destinationLocal: FlowEndpointInfo | undefined;
  readonly destinationIdentity: number;
  readonly destinationLabels: readonly string[] | undefined;
  /** The rule a policy verdict's cookie stood for. */
  readonly policy: FlowPolicy | undefined;
  /** For a policy drop: whether the policy that denied it was the destination's ingress policy. */
  readonly policyIngress: boolean | undefined;

  // Flat, not two side objects: this runs per datapath event.
  constructor(
    store: FlowStore,
    sourceLocal: FlowEndpointInfo | undefined,
    sourceIdentity: number,
    destinationLocal: FlowEndpointInfo | undefined,
    destinationIdentity: number,
    policy: FlowPolicy | undefined,
    policyIngress: boolean | undefined,
  ) {
    this.#store = store;
    this.sourceLocal = sourceLocal;
    this.sourceIdentity = sourceIdentity;
    this.sourceLabels = store.names.identityLabels(sourceIdentity);
    this.destinationLocal = destinationLocal;
    this.destinationIdentity = destinationIdentity;
    this.destinationLabels = store.names.identityLabels(destinationIdentity);
    this.policy = policy;
    this.policyIngress = policyIngress;
  }

  /** When the event happened, ns since the epoch. */
  get timeNs(): bigint {
    return (this.#timeNs ??= this.#store.wallClockNs(this.#store.records.bytes.readBigUInt64LE(this.#offset() + HDR.timestamp_ns)));
  }

  get flow(): Flow {
    const at = this.#offset();
    const records = this.#store.records;
    this.#uuid ??= randomUUID();
    return buildFlow(records.bytes, at, this.timeNs, this.#uuid, this.#store.names.nodeName, this);
  }

  /** What the Hubble metrics count of this flow, read without building the Flow (while the buffer holds it). */
  metricInput(): FlowMetricInput {
    return new EntryMetricInput(this.#store.records.bytes, this.#offset(), this);
  }

  /** Where the record is, while it is still this entry's: every reader builds flows while the buffer holds them. */
  #offset(): number {
    if (!this.#store.holds(this)) throw new ObserverError('ERR_OBSERVER_OVERWRITTEN', `flow ${this.seq} was read after the buffer overwrote it`);
    return this.#store.records.offset(this.seq % this.#store.records.lengths.length);
  }
}

/**
 * Datapath records into flow entries, for one observer: checks each record, names both sides of
 * it, and remembers the last denied policy verdict (the drop that follows takes its direction).
 */
export class FlowIngest {
  readonly #store: FlowStore;
  readonly #names: FlowNames;
  /** Dotted quads by address, so a busy pair of pods costs no string formatting per flow. */
  #addresses = new Map<number, string>();
  /** The last denied policy verdict: the drop that follows it takes its direction. */
  #denied: { hash: number; source: number; srcIdentity: number; dstIdentity: number; ingress: boolean } | undefined;

  constructor(store: FlowStore) {
    this.#store = store;
    this.#names = store.names;
  }

  /**
   * The entry of the record at `offset` in `record`, which the caller then puts in the store's
   * slot of the entry's sequence number.
   * @throws BpfError ERR_CODEC for a record too short for its type or of an unknown type
   */
  entry(record: Buffer, offset: number, length: number): FlowEntry {
    const type = checkEventRecord(record, offset, length);
    const flags = record[offset + HDR.flags];
    const source = record.readUInt16LE(offset + HDR.source);
    const srcIdentity = record.readUInt32LE(offset + HDR.src_identity);
    const dstIdentity = record.readUInt32LE(offset + HDR.dst_identity);
    const verdict = type === MonitorEventType.POLICY_VERDICT;
    const reporter = verdict ? record.readUInt16LE(offset + VERDICT.endpoint_id) : source;
    const ingress = recordIngress(record, offset, type, flags);
    const capture = offset + CAPTURE_AT[type];
    const ip = ipv4HeaderAt(record, capture, capture + Math.min(record.readUInt32LE(offset + HDR.cap_len), EVENT_CAPTURE_LEN));
    let policy: FlowPolicy | undefined;
    let policyIngress: boolean | undefined;
    if (verdict) {
      const allowed = verdictAllowed(record, offset);
      this.#denied = allowed ? undefined : { hash: record.readUInt32LE(offset + HDR.hash), source, srcIdentity, dstIdentity, ingress };
      const cookie = record.readUInt32LE(offset + VERDICT.cookie);
      policy = cookie ? this.#names.policyForCookie(cookie) : undefined;
    } else if (type === MonitorEventType.DROP) {
      policyIngress = this.#policyIngress(record, offset, source, srcIdentity, dstIdentity);
    }
    // Packets without an IPv4 header (IPv6 neighbour discovery, ARP) still name the endpoint
    // whose program reported them, on the side that endpoint is.
    const sourceLocal = this.#local(ip < 0 ? undefined : this.#address(record, ip + 12), ingress ? 0 : reporter);
    const destinationLocal = this.#local(ip < 0 ? undefined : this.#address(record, ip + 16), ingress ? reporter : record.readUInt16LE(offset + HDR.dst_id));
    // The datapath may not know a local peer's identity (0) where the agent does.
    return new FlowEntry(
      this.#store,
      sourceLocal,
      srcIdentity !== 0 ? srcIdentity : (sourceLocal?.identity ?? 0),
      destinationLocal,
      dstIdentity !== 0 ? dstIdentity : (destinationLocal?.identity ?? 0),
      policy,
      policyIngress,
    );
  }

  #address(record: Buffer, at: number): string {
    const key = ipv4At(record, at);
    let text = this.#addresses.get(key);
    if (text === undefined) {
      // Bounded: a scan of many addresses must not grow the heap.
      if (this.#addresses.size >= ADDRESS_CACHE_SIZE) this.#addresses = new Map();
      text = ipString(record, at);
      this.#addresses.set(key, text);
    }
    return text;
  }

  /** The local endpoint (or remote pod) at the address, or the one that reported the event. */
  #local(address: string | undefined, reporter: number): FlowEndpointInfo | undefined {
    return (address === undefined ? undefined : this.#names.endpointByAddress(address)) ?? (reporter ? this.#names.endpointById(reporter) : undefined);
  }

  /**
   * Whether a policy drop was an ingress decision. The datapath judges a local destination's
   * ingress policy in the sender's program (the packet skips the receiver's), so the drop event
   * itself says egress; the denied verdict just before it, for the same packet, knows better.
   */
  #policyIngress(record: Buffer, offset: number, source: number, srcIdentity: number, dstIdentity: number): boolean | undefined {
    const reason = record[offset + HDR.subtype];
    if (reason !== DropReasonCode.DROP_POLICY && reason !== DropReasonCode.DROP_POLICY_DENY) return undefined;
    const denied = this.#denied;
    this.#denied = undefined;
    const same = denied && denied.hash === record.readUInt32LE(offset + HDR.hash) && denied.source === source && denied.srcIdentity === srcIdentity && denied.dstIdentity === dstIdentity;
    return same ? denied.ingress : undefined;
  }
}

/** Addresses whose dotted quads are remembered at once. */
const ADDRESS_CACHE_SIZE = 4096;
