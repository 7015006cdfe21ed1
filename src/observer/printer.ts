/**
 * Flows as `hubble observe` prints them: compact lines, dict blocks, a table, and the
 * GetFlowsResponse as JSON (proto field names) or protojson (lowerCamelCase).
 * @module
 */
import { identityName } from '../identity/index.ts';
import { POLICY_MATCH_NAME, type PolicyMatch } from '../policy/index.ts';
import { dropReasonDescription, MonitorEventType, tracePointName } from '../datapath/index.ts';
import { TCP_FLAG_KEYS, timestampToNs, type Flow, type FlowEndpoint, type GetFlowsResponse, type Timestamp } from './types.ts';

export const OUTPUT_FORMATS = ['compact', 'dict', 'json', 'jsonpb', 'table'] as const;
export type FlowOutput = (typeof OUTPUT_FORMATS)[number];

export interface PrintOptions {
  nodeName?: boolean;
  policyNames?: boolean;
}

const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/** Go's StampMilli (`Jan _2 15:04:05.000`), in local time, as hubble prints it. */
export function stampMilli(ts: Timestamp | undefined): string {
  if (!ts) return 'N/A';
  const d = new Date(Number(timestampToNs(ts) / 1_000_000n));
  const two = (n: number) => String(n).padStart(2, '0');
  return `${MONTHS[d.getMonth()]} ${String(d.getDate()).padStart(2, ' ')} ${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}.${String(d.getMilliseconds()).padStart(3, '0')}`;
}

function ports(flow: Flow): [number | undefined, number | undefined] {
  const l4 = flow.l4?.TCP ?? flow.l4?.UDP ?? flow.l4?.SCTP;
  return [l4?.sourcePort, l4?.destinationPort];
}

function hostPort(ep: FlowEndpoint | undefined, ip: string | undefined, port: number | undefined, mac?: string): string {
  // Without an IP header (IPv6 neighbour discovery, ARP) the MAC address is all there is.
  const host = ep?.podName ? `${ep.namespace ? `${ep.namespace}/` : ''}${ep.podName}` : (ip ?? mac ?? '');
  return port ? `${host}:${port}` : host;
}

function identity(ep: FlowEndpoint | undefined): string {
  return `(${identityName(ep?.identity ?? 0)})`;
}

const ICMP4_TYPES: Readonly<Record<number, string>> = { 0: 'EchoReply', 3: 'DestinationUnreachable', 5: 'Redirect', 8: 'EchoRequest', 11: 'TimeExceeded' };

/** DNS response codes as miekg/dns names them in Hubble's summaries. */
const RCODE_NAMES: Readonly<Record<number, string>> = { 0: 'NOERROR', 1: 'FORMERR', 2: 'SERVFAIL', 3: 'NXDOMAIN', 4: 'NOTIMP', 5: 'REFUSED' };

/**
 * Hubble's summary of a DNS flow: `DNS Query example.com. A`, or for an answer
 * `DNS Answer "1.2.3.4" TTL: 30 (Proxy example.com. A)` (`RCode: REFUSED` when it failed).
 */
export function dnsSummary(kind: string | undefined, dns: NonNullable<NonNullable<Flow['l7']>['dns']>): string {
  const qtypes = (dns.qtypes ?? []).join(',');
  if (kind !== 'RESPONSE') return `DNS Query ${dns.query ?? ''} ${qtypes}`;
  const rcode = dns.rcode ?? 0;
  const answer = rcode === 0 ? `${JSON.stringify((dns.ips ?? []).join(','))} TTL: ${dns.ttl ?? 0}` : `RCode: ${RCODE_NAMES[rcode] ?? String(rcode)}`;
  return `DNS Answer ${answer} (${dns.observationSource === 'proxy' ? 'Proxy' : 'Query'} ${dns.query ?? ''} ${qtypes})`;
}

/**
 * An HTTP flow's summary as Hubble writes it: the request line, and for a response its code and
 * latency first: `HTTP/1.1 200 9ms (POST http://10.0.0.2/v1/request-landing)`.
 */
export function httpSummary(kind: string | undefined, latencyNs: string | number | bigint | undefined, http: NonNullable<NonNullable<Flow['l7']>['http']>): string {
  const request = `${http.method ?? ''} ${http.url ?? ''}`;
  if (kind !== 'RESPONSE') return `${http.protocol ?? 'HTTP'} ${request}`;
  return `${http.protocol ?? 'HTTP'} ${http.code ?? 0} ${Math.round(Number(latencyNs ?? 0) / 1e6)}ms (${request})`;
}

/** The part in parentheses: TCP flags, the protocol, or the ICMP message. */
export function flowSummary(flow: Flow): string {
  if (flow.l7?.dns) return dnsSummary(flow.l7.type, flow.l7.dns);
  if (flow.l7?.http) return httpSummary(flow.l7.type, flow.l7.latencyNs, flow.l7.http);
  const l4 = flow.l4;
  if (l4?.TCP) {
    const flags = TCP_FLAG_KEYS.filter((k) => l4.TCP?.flags?.[k]);
    return flags.length ? `TCP Flags: ${flags.join(', ')}` : 'TCP';
  }
  if (l4?.UDP) return 'UDP';
  if (l4?.SCTP) return 'SCTP';
  if (l4?.ICMPv4) return `ICMPv4 ${ICMP4_TYPES[l4.ICMPv4.type ?? 0] ?? `type ${l4.ICMPv4.type ?? 0}`}`;
  if (l4?.ICMPv6) return `ICMPv6 type ${l4.ICMPv6.type ?? 0}`;
  return '';
}

function isPolicyVerdict(flow: Flow): boolean {
  return flow.eventType?.type === MonitorEventType.POLICY_VERDICT;
}

/** The event's type as hubble names it: the trace point, the drop reason, or `policy-verdict:…`. */
export function flowType(flow: Flow): string {
  const type = flow.eventType?.type;
  if (type === MonitorEventType.TRACE) return tracePointName(flow.eventType?.subType ?? 0);
  if (flow.l7?.http) return flow.l7.type === 'RESPONSE' ? 'http-response' : 'http-request';
  if (flow.l7?.dns) return flow.l7.type === 'RESPONSE' ? 'dns-response' : 'dns-request';
  // As hubble prints it: "Policy denied DROPPED".
  if (type === MonitorEventType.DROP) return dropReasonDescription(flow.dropReason ?? 0);
  if (type === MonitorEventType.POLICY_VERDICT) {
    const match = POLICY_MATCH_NAME[(flow.policyMatchType ?? 0) as PolicyMatch] ?? String(flow.policyMatchType ?? 0);
    const direction = flow.trafficDirection === 'INGRESS' ? 'INGRESS' : flow.trafficDirection === 'EGRESS' ? 'EGRESS' : 'UNKNOWN';
    return `policy-verdict:${match} ${direction}`;
  }
  return 'UNKNOWN';
}

function verdict(flow: Flow): string {
  if (!isPolicyVerdict(flow)) return flow.verdict ?? 'VERDICT_UNKNOWN';
  return flow.verdict === 'FORWARDED' ? 'ALLOWED' : flow.verdict === 'AUDIT' ? 'AUDITED' : 'DENIED';
}

function policyNames(flow: Flow): string {
  const policies = [...(flow.ingressAllowedBy ?? []), ...(flow.egressAllowedBy ?? []), ...(flow.ingressDeniedBy ?? []), ...(flow.egressDeniedBy ?? [])];
  return policies.map((p) => `${p.kind ?? ''}/${p.namespace ? `${p.namespace}/` : ''}${p.name ?? ''}`).join(',');
}

interface Sides {
  src: string;
  dst: string;
  arrow: string;
}

function sides(flow: Flow): Sides {
  const [sport, dport] = ports(flow);
  let src = `${hostPort(flow.source, flow.IP?.source, sport, flow.ethernet?.source)} ${identity(flow.source)}`;
  let dst = `${hostPort(flow.destination, flow.IP?.destination, dport, flow.ethernet?.destination)} ${identity(flow.destination)}`;
  let arrow = '->';
  if (flow.isReply === undefined) arrow = '<>';
  else if (flow.isReply.value) {
    [src, dst] = [dst, src];
    arrow = '<-';
  }
  return { src, dst, arrow };
}

/**
 * One flow as `hubble observe -o compact` prints it.
 *
 * @example
 * compactLine(flow); // 'Dec  3 13:40:33.123: default/xwing:41234 (ID:1234) -> default/deathstar:80 (ID:5678) policy-verdict:none INGRESS DENIED (TCP Flags: SYN)'
 */
export function compactLine(flow: Flow, options: PrintOptions = {}): string {
  const { src, dst, arrow } = sides(flow);
  const node = options.nodeName && flow.nodeName ? ` [${flow.nodeName}]` : '';
  const summary = flowSummary(flow);
  const policies = options.policyNames && isPolicyVerdict(flow) ? policyNames(flow) : '';
  return `${stampMilli(flow.time)}${node}: ${src} ${arrow} ${dst} ${flowType(flow)}${policies ? ` ${policies}` : ''} ${verdict(flow)}${summary ? ` (${summary})` : ''}`;
}

/** One flow as a `hubble observe -o dict` block. */
export function dictBlock(flow: Flow, options: PrintOptions = {}): string {
  const [sport, dport] = ports(flow);
  const rows: [string, string][] = [
    ['TIMESTAMP', stampMilli(flow.time)],
    ...(options.nodeName ? [['NODE', flow.nodeName ?? ''] as [string, string]] : []),
    ['SOURCE', hostPort(flow.source, flow.IP?.source, sport)],
    ['DESTINATION', hostPort(flow.destination, flow.IP?.destination, dport)],
    ['TYPE', flowType(flow)],
    ['VERDICT', verdict(flow)],
    ['SUMMARY', flowSummary(flow)],
  ];
  const width = Math.max(...rows.map(([k]) => k.length));
  return `${rows.map(([k, v]) => `${k.padStart(width)}: ${v}`).join('\n')}\n${'-'.repeat(12)}`;
}

export const TABLE_HEADER = ['TIMESTAMP', 'SOURCE', 'DESTINATION', 'TYPE', 'VERDICT', 'SUMMARY'] as const;

export function tableRow(flow: Flow): string[] {
  const [sport, dport] = ports(flow);
  return [stampMilli(flow.time), hostPort(flow.source, flow.IP?.source, sport), hostPort(flow.destination, flow.IP?.destination, dport), flowType(flow), verdict(flow), flowSummary(flow)];
}

/** RFC 3339 with nanoseconds, as protojson writes a Timestamp. */
function rfc3339(ts: Timestamp): string {
  const ns = timestampToNs(ts);
  const iso = new Date(Number(ns / 1_000_000n)).toISOString();
  const nanos = String(ns % 1_000_000_000n).padStart(9, '0').replace(/0+$/, '');
  return `${iso.slice(0, 19)}${nanos ? `.${nanos}` : ''}Z`;
}

const WRAPPERS = new Set(['isReply', 'cpu', 'numConnectedNodes', 'numUnavailableNodes']);
const ONEOF_CASES = new Set(['responseTypes', 'protocol', 'record']);

function toJson(value: unknown, protoNames: boolean, key = ''): unknown {
  if (Array.isArray(value)) return value.map((v) => toJson(v, protoNames));
  if (value === null || typeof value !== 'object') return value;
  const object = value as Record<string, unknown>;
  if ('seconds' in object && 'nanos' in object && Object.keys(object).length === 2) return rfc3339(object as unknown as Timestamp);
  if (WRAPPERS.has(key)) return object.value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(object)) {
    // protobufjs's oneof discriminators are its own (they name a sibling field); protojson has no
    // such field. HTTP's `protocol` is a field of its own.
    if (ONEOF_CASES.has(k) && typeof v === 'string' && v in object) continue;
    out[protoNames && k !== 'ipVersion' ? k.replace(/[a-z][A-Z]/g, (c) => `${c[0]}_${c[1].toLowerCase()}`) : k] = toJson(v, protoNames, k);
  }
  return out;
}

/** A GetFlowsResponse as one line of JSON: proto field names (`json`) or protojson names (`jsonpb`). */
export function responseJson(response: GetFlowsResponse, format: 'json' | 'jsonpb'): string {
  return JSON.stringify(toJson(response, format === 'json'));
}
