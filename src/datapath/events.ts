/**
 * Datapath events (bpf/lib/events.h): their codecs, Cilium's monitor numbering, and the decoder
 * of ring buffer records into typed trace, drop and policy-verdict events with a summary of the captured packet.
 * layout.test.ts checks the codecs and the enums against the compiled object's BTF.
 * @module
 */
import { BpfError, bytes, i32, pad, struct, u16, u32, u64, u8, type StructValue } from '../ebpf/index.ts';
import { POLICY_MATCH_NAME, PolicyDirection, PolicyVerdict, directionName, protocolName, type DirectionName, type PolicyMatch } from '../policy/policy-map.ts';
import { dropReasonName } from './drop-reasons.ts';
import { summarizePacket, type PacketSummary } from './packet.ts';

/** Cilium's monitor message types (`enum ciliate_event_type`). */
export const MonitorEventType = { DROP: 1, TRACE: 4, POLICY_VERDICT: 5 } as const;
export type MonitorEventType = (typeof MonitorEventType)[keyof typeof MonitorEventType];
/** The C enumerator of each MonitorEventType key. */
export const MONITOR_EVENT_TYPE_C_NAMES: Readonly<Record<keyof typeof MonitorEventType, string>> = {
  DROP: 'CILIATE_EVENT_DROP',
  TRACE: 'CILIATE_EVENT_TRACE',
  POLICY_VERDICT: 'CILIATE_EVENT_POLICY_VERDICT',
};

/**
 * Trace observation points, one row each: the C enumerator of `enum ciliate_trace_point`, the
 * number the datapath sends, the name `hubble observe` prints, and Hubble's
 * TraceObservationPoint value (the same number except TO_ENDPOINT, 101 there).
 */
const TRACE_POINT_ROWS = [
  ['TRACE_TO_LXC', 0, 'to-endpoint', 101],
  ['TRACE_TO_PROXY', 1, 'to-proxy', 1],
  ['TRACE_TO_HOST', 2, 'to-host', 2],
  ['TRACE_TO_STACK', 3, 'to-stack', 3],
  ['TRACE_TO_OVERLAY', 4, 'to-overlay', 4],
  ['TRACE_FROM_LXC', 5, 'from-endpoint', 5],
  ['TRACE_FROM_PROXY', 6, 'from-proxy', 6],
  ['TRACE_FROM_HOST', 7, 'from-host', 7],
  ['TRACE_FROM_STACK', 8, 'from-stack', 8],
  ['TRACE_FROM_OVERLAY', 9, 'from-overlay', 9],
  ['TRACE_FROM_NETWORK', 10, 'from-network', 10],
  ['TRACE_TO_NETWORK', 11, 'to-network', 11],
] as const;
type TraceRow = (typeof TRACE_POINT_ROWS)[number];

/** `TracePoint.TRACE_TO_LXC === 0`: the C enumerators by name. */
export const TracePoint = Object.freeze(Object.fromEntries(TRACE_POINT_ROWS.map(([c, code]) => [c, code]))) as {
  readonly [R in TraceRow as R[0]]: R[1];
};
export type TracePoint = TraceRow[1];

const TRACE_POINT_BY_CODE = new Map<number, TraceRow>(TRACE_POINT_ROWS.map((row) => [row[1], row]));

/** `hubble observe`'s name of an observation point, e.g. 'to-endpoint'. */
export function tracePointName(point: number): string {
  return TRACE_POINT_BY_CODE.get(point)?.[2] ?? `unknown-trace-point(${point})`;
}

/** Hubble's TraceObservationPoint enum value of a datapath observation point. */
export function hubbleObservationPoint(point: number): number | undefined {
  return TRACE_POINT_BY_CODE.get(point)?.[3];
}

/** Conntrack result carried in trace events' `reason` (Cilium's TRACE_REASON_*; C `enum ct_status`). */
export const CtStatus = { NEW: 0, ESTABLISHED: 1, REPLY: 2, RELATED: 3 } as const;
export type CtStatus = (typeof CtStatus)[keyof typeof CtStatus];

/**
 * ciliate_event_hdr.flags. SOCK: reported by a socket hook before any packet existed; the
 * "capture" is the headers the first packet would have had, made from the socket address.
 */
export const EventFlag = { REPLY: 0x01, INGRESS: 0x02, SOCK: 0x04 } as const;

/** Bytes of the packet each event carries (CILIATE_EVENT_CAP_LEN). */
export const EVENT_CAPTURE_LEN = 128;

export const eventHeader = struct('ciliate_event_hdr', {
  type: u8,
  subtype: u8,
  source: u16,
  hash: u32,
  orig_len: u32,
  cap_len: u32,
  src_identity: u32,
  dst_identity: u32,
  ifindex: u32,
  dst_id: u16,
  reason: u8,
  flags: u8,
  timestamp_ns: u64,
});
export type EventHeader = StructValue<(typeof eventHeader)['fields']>;

export const traceEvent = struct('ciliate_trace_event', {
  hdr: eventHeader,
  dst_ifindex: u32,
  _pad: pad(4),
  data: bytes(EVENT_CAPTURE_LEN),
});

export const dropEvent = struct('ciliate_drop_event', {
  hdr: eventHeader,
  ext_error: i32,
  line: u32,
  data: bytes(EVENT_CAPTURE_LEN),
});

/** A policy decision (`struct ciliate_policy_verdict_event`); hdr.subtype is 0. */
export const policyVerdictEvent = struct('ciliate_policy_verdict_event', {
  hdr: eventHeader,
  remote_identity: u32,
  cookie: u32,
  dport: u16,
  endpoint_id: u16,
  protocol: u8,
  direction: u8,
  verdict: u8,
  match_type: u8,
  drop_reason: u8,
  _pad: pad(7),
  data: bytes(EVENT_CAPTURE_LEN),
});

/** Bytes of the largest event: what a consumer keeping records needs a slot to hold. */
export const MAX_EVENT_BYTES = Math.max(traceEvent.size, dropEvent.size, policyVerdictEvent.size);

/**
 * Slots of MAX_EVENT_BYTES for records a consumer keeps (the Monitor's recent events, the
 * observer's queue and flow buffer), each with its length. Records are copied in without
 * allocating: Buffer#copy and subarray make a view object of the part they copy, garbage per
 * record at hundreds of thousands a second. Records start and end on 4-byte boundaries in the ring
 * (8-byte, in fact) and in the slots, so they go over as 32-bit words through Int32Array views,
 * the source's made once per memory it comes from (the ring's stays the same).
 */
export class RecordSlots {
  readonly bytes: Buffer;
  readonly lengths: Uint16Array;
  readonly #words: Int32Array;
  /** The view the last aligned copy came from (the ring's, which stays the same) and its words. */
  #source: Uint8Array | undefined;
  #sourceWords: Int32Array<ArrayBufferLike> = new Int32Array(0);

  constructor(count: number) {
    // Its own ArrayBuffer (not Buffer's pool), so slot offsets are word-aligned.
    this.bytes = Buffer.from(new ArrayBuffer(count * MAX_EVENT_BYTES));
    this.lengths = new Uint16Array(count);
    this.#words = new Int32Array(this.bytes.buffer);
  }

  /** Where slot `slot` starts in `bytes`. */
  offset(slot: number): number {
    return slot * MAX_EVENT_BYTES;
  }

  /**
   * Copies `length` bytes at `offset` in `from` into slot `slot`. A record longer than a slot
   * keeps its first MAX_EVENT_BYTES: every known event fits, and no decoder reads past its own.
   */
  put(slot: number, from: Uint8Array, offset: number, length: number): void {
    const kept = Math.min(length, MAX_EVENT_BYTES);
    const at = slot * MAX_EVENT_BYTES;
    this.lengths[slot] = kept;
    const start = from.byteOffset + offset;
    if ((start & 3) !== 0 || (kept & 3) !== 0) {
      this.bytes.set(from.subarray(offset, offset + kept), at);
      return;
    }
    // Compared by view, not by `from.buffer`: over external memory (the ring's mapping) that getter
    // is a runtime call: 7% of the agent's CPU per connection in a profile of the datapath bench.
    if (from !== this.#source) {
      this.#source = from;
      this.#sourceWords = new Int32Array(from.buffer, 0, from.buffer.byteLength >> 2);
    }
    const source = this.#sourceWords;
    const words = this.#words;
    for (let i = 0, s = start >> 2, d = at >> 2; i < kept >> 2; i++) words[d + i] = source[s + i];
  }
}

interface EventBase {
  /** Endpoint id of the program that reported it. */
  source: number;
  hash: number;
  /** Packet length on the wire, and how much of it `packet` was decoded from. */
  origLen: number;
  capLen: number;
  srcIdentity: number;
  dstIdentity: number;
  ifindex: number;
  /** Destination endpoint id, 0 when not a local endpoint. */
  dstId: number;
  /** CLOCK_MONOTONIC, ns. */
  timestampNs: bigint;
  isReply: boolean;
  /** Seen on the way into an endpoint (cil_to_container) rather than out of one. */
  ingress: boolean;
  /** Reported by a socket hook (bpf_sock.c): `packet` is the headers made from the socket address. */
  socket: boolean;
  packet: PacketSummary;
  /** The captured bytes themselves (cap_len of them). */
  data: Buffer;
}

export interface TraceEvent extends EventBase {
  kind: 'trace';
  observationPoint: number;
  /** e.g. 'to-endpoint' */
  observationPointName: string;
  ctStatus: number;
  /** Interface the packet was redirected to, 0 when handed to the stack. */
  dstIfindex: number;
}

export interface DropEvent extends EventBase {
  kind: 'drop';
  /** Cilium's drop reason number, e.g. 134. */
  reason: number;
  /** Hubble's name of it, e.g. 'INVALID_PACKET_DROPPED'. */
  reasonName: string;
  extError: number;
  /** Line of bpf_lxc.c (or the header) that dropped it. */
  line: number;
}

/**
 * A policy decision on a new connection (monitor type 5, Cilium's PolicyVerdictNotify): one per
 * enforced check, allowed or denied; a denied one is followed by its drop event.
 */
export interface PolicyVerdictEvent extends EventBase {
  kind: 'policy-verdict';
  /** The endpoint whose policy map decided (the source for egress, the destination for ingress). */
  endpointId: number;
  direction: PolicyDirection;
  directionName: DirectionName;
  verdict: PolicyVerdict;
  allowed: boolean;
  /** Cilium's match type number, and its name ('L3-L4', 'all', 'none', …). */
  match: PolicyMatch;
  matchName: string;
  /** Cookie of the deciding entry: the id of the rule it came from; 0 on a miss. */
  cookie: number;
  remoteIdentity: number;
  /** IP protocol number and name. */
  protocol: number;
  protocolName: string;
  /** Destination port in host order (ICMP: the type). */
  dport: number;
  /** 133 (no allow rule) or 181 (explicit deny) when denied, 0 when allowed. */
  dropReason: number;
  ctStatus: number;
}

export type DatapathEvent = TraceEvent | DropEvent | PolicyVerdictEvent;

function base(hdr: EventHeader, data: Buffer): EventBase {
  const captured = data.subarray(0, Math.min(hdr.cap_len, data.length));
  return {
    source: hdr.source,
    hash: hdr.hash,
    origLen: hdr.orig_len,
    capLen: hdr.cap_len,
    srcIdentity: hdr.src_identity,
    dstIdentity: hdr.dst_identity,
    ifindex: hdr.ifindex,
    dstId: hdr.dst_id,
    timestampNs: hdr.timestamp_ns,
    isReply: (hdr.flags & EventFlag.REPLY) !== 0,
    ingress: (hdr.flags & EventFlag.INGRESS) !== 0,
    socket: (hdr.flags & EventFlag.SOCK) !== 0,
    packet: summarizePacket(captured),
    data: captured,
  };
}

/** Bytes a record of each monitor type must have; 0 for a type this build does not know. */
function recordSize(type: number): number {
  return type === MonitorEventType.TRACE
    ? traceEvent.size
    : type === MonitorEventType.DROP
      ? dropEvent.size
      : type === MonitorEventType.POLICY_VERDICT
        ? policyVerdictEvent.size
        : 0;
}

/**
 * The monitor type of a record `length` bytes long, after checking that it is one this build
 * knows and that the record holds it whole: what makes the record's fixed fields safe to read
 * one at a time (the observer reads them so, at `eventHeader.offsets` and the like).
 * Throws ERR_CODEC for a record too short for its type or of a type this build does not know.
 */
export function checkEventRecord(record: Uint8Array, offset = 0, length = record.length - offset): MonitorEventType {
  if (length < 1) throw new BpfError('ERR_CODEC', 'decoding datapath event: empty record');
  const type = record[offset];
  const need = recordSize(type);
  if (need === 0) throw new BpfError('ERR_CODEC', `decoding datapath event: unknown monitor event type ${type}`);
  if (length < need) throw new BpfError('ERR_CODEC', `decoding datapath event of type ${type}: ${length} bytes, want ${need}`);
  return type as MonitorEventType;
}

/**
 * Decodes one ring buffer record. Copies what it keeps, so it may be called from a RingBuffer
 * handler with the ring's own memory: `(view, offset, length, bytes) => decodeEvent(bytes, offset, length)`.
 * Throws ERR_CODEC for a record too short for its type or of a type this build does not know.
 */
export function decodeEvent(record: Uint8Array, offset = 0, length = record.length - offset): DatapathEvent {
  const type = checkEventRecord(record, offset, length);
  const buffer = Buffer.from(record.buffer, record.byteOffset + offset, length);
  if (type === MonitorEventType.TRACE) {
    const ev = traceEvent.decode(buffer, 0);
    return {
      kind: 'trace',
      ...base(ev.hdr, ev.data),
      observationPoint: ev.hdr.subtype,
      observationPointName: tracePointName(ev.hdr.subtype),
      ctStatus: ev.hdr.reason,
      dstIfindex: ev.dst_ifindex,
    };
  }
  if (type === MonitorEventType.POLICY_VERDICT) {
    const ev = policyVerdictEvent.decode(buffer, 0);
    const direction = ev.direction as PolicyDirection;
    const match = ev.match_type as PolicyMatch;
    return {
      kind: 'policy-verdict',
      ...base(ev.hdr, ev.data),
      endpointId: ev.endpoint_id,
      direction,
      directionName: directionName(direction),
      verdict: ev.verdict as PolicyVerdict,
      allowed: ev.verdict === PolicyVerdict.ALLOWED,
      match,
      matchName: POLICY_MATCH_NAME[match] ?? `unknown-match(${ev.match_type})`,
      cookie: ev.cookie,
      remoteIdentity: ev.remote_identity,
      protocol: ev.protocol,
      protocolName: protocolName(ev.protocol),
      dport: ev.dport,
      dropReason: ev.drop_reason,
      ctStatus: ev.hdr.reason,
    };
  }
  const ev = dropEvent.decode(buffer, 0);
  return {
    kind: 'drop',
    ...base(ev.hdr, ev.data),
    reason: ev.hdr.subtype,
    reasonName: dropReasonName(ev.hdr.subtype),
    extError: ev.ext_error,
    line: ev.line,
  };
}
