/**
 * L7 flows: what the node proxy reports of each HTTP exchange, as Hubble shows it (`Type: L7`,
 * event type 129, `l7.http`): a REQUEST when the proxy decided (FORWARDED or DROPPED, with the
 * rules that allowed it) and a RESPONSE with the code and the latency. The DNS proxy's queries
 * the same way (`l7.dns`, egress from the pod to its resolver): a REQUEST when it decided, and a
 * RESPONSE with the answer when it forwarded one.
 * @module
 */
import type { FlowMetricEndpoint, FlowMetricInput } from '../metrics/index.ts';
import { flowEndpoint, type FlowEndpointInfo, type FlowNames } from './flow.ts';
import { RESERVED_IDENTITY } from '../identity/index.ts';
import { dnsSummary, httpSummary } from './printer.ts';
import { timestampFromNs, type Flow, type FlowPolicy } from './types.ts';

/** One HTTP request or response the proxy saw. */
export interface L7HttpRecord {
  kind: 'REQUEST' | 'RESPONSE';
  /** Wall clock, nanoseconds since the epoch, as a decimal string (IPC carries no bigint). */
  timeNs: string;
  verdict: 'FORWARDED' | 'DROPPED';
  /** The client and the original destination, with the client's identity as the proxy found it. */
  source: { address: string; port: number; identity: number };
  destination: { address: string; port: number; identity: number };
  method: string;
  /** `http://host/path?query` as Hubble prints it. */
  url: string;
  protocol: string;
  /** RESPONSE: the status code; a DROPPED REQUEST: the 403 the proxy answered it with. */
  code?: number;
  /** RESPONSE: request start to response headers, nanoseconds. */
  latencyNs?: number;
  /** Rule keys that allowed (FORWARDED) the request. */
  ruleKeys?: string[];
  /** Whose rules judged it: the client's egress rules, the server's ingress rules (the default), or both. */
  direction?: 'EGRESS' | 'INGRESS';
  /** With `direction` EGRESS and the server's ingress rules judging too: the rule keys of those. */
  ingressRuleKeys?: string[];
}

/** One DNS query or answer the DNS proxy handled, as Cilium's DNS proxy logs it. */
export interface L7DnsRecord {
  kind: 'REQUEST' | 'RESPONSE';
  /** Wall clock, nanoseconds since the epoch, as a decimal string. */
  timeNs: string;
  verdict: 'FORWARDED' | 'DROPPED';
  /** The local endpoint that asked; its address and pod come from the endpoints the observer knows. */
  endpoint: number;
  /** The endpoint's source port; 0 when the query came without one (the API). */
  sourcePort: number;
  resolver: { address: string; port: number };
  protocol: 'UDP' | 'TCP';
  dns: {
    /** The question's name, fully qualified (`example.com.`), as Hubble shows it. */
    query: string;
    qtypes: string[];
    rcode: number;
    /** RESPONSE: the addresses, CNAME targets and record types the answer held, and its lowest TTL. */
    ips: string[];
    ttl: number;
    cnames: string[];
    rrtypes: string[];
  };
}

export type L7Record = L7HttpRecord | L7DnsRecord;

/** Cilium's monitor type of L7 records (MessageTypeAccessLog). */
const EVENT_TYPE_L7 = 129;

/**
 * The Hubble flow of an L7 record, its endpoints named as every other flow's.
 *
 * @example
 * const flow = l7HttpFlow(record, names, (key) => ({ name: key }));
 * flow.l7?.http?.method; // 'POST'
 */
export function l7HttpFlow(r: L7HttpRecord, names: FlowNames, policy: (ruleKey: string) => FlowPolicy | undefined): Flow {
  const src = names.endpointByAddress(r.source.address);
  const dst = names.endpointByAddress(r.destination.address);
  const response = r.kind === 'RESPONSE';
  // A response travels from the server back to the client: Hubble swaps the ends.
  const [from, to] = response ? [r.destination, r.source] : [r.source, r.destination];
  const [fromLocal, toLocal] = response ? [dst, src] : [src, dst];
  const flow: Flow = {
    time: timestampFromNs(BigInt(r.timeNs)),
    verdict: r.verdict,
    IP: { source: from.address, destination: to.address, ipVersion: 'IPv4' },
    l4: { TCP: { sourcePort: from.port, destinationPort: to.port } },
    source: flowEndpoint(fromLocal, from.identity, names.identityLabels(from.identity)),
    destination: flowEndpoint(toLocal, to.identity, names.identityLabels(to.identity)),
    Type: 'L7',
    nodeName: names.nodeName,
    eventType: { type: EVENT_TYPE_L7 },
    trafficDirection: r.direction ?? 'INGRESS',
    isReply: { value: response },
    l7: {
      type: r.kind,
      latencyNs: r.latencyNs === undefined ? undefined : String(r.latencyNs),
      http: { code: r.code, method: r.method, url: r.url, protocol: r.protocol },
    },
    Summary: httpSummary(r.kind, r.latencyNs, { code: r.code, method: r.method, url: r.url, protocol: r.protocol }),
  };
  if (!response && r.verdict === 'FORWARDED' && r.ruleKeys) {
    const policies = (keys: string[]) => keys.map(policy).filter((p): p is FlowPolicy => p !== undefined);
    if (r.direction === 'EGRESS') {
      flow.egressAllowedBy = policies(r.ruleKeys);
      if (r.ingressRuleKeys) flow.ingressAllowedBy = policies(r.ingressRuleKeys);
    } else flow.ingressAllowedBy = policies(r.ruleKeys);
  }
  if (r.verdict === 'DROPPED') flow.dropReasonDesc = 'POLICY_DENIED';
  return flow;
}

/** The two ends of a DNS record: the pod and its resolver, the resolver first for an answer. */
function dnsEnds(r: L7DnsRecord, names: FlowNames) {
  const pod = names.endpointById(r.endpoint);
  const resolver = names.endpointByAddress(r.resolver.address);
  const client = { local: pod, address: pod?.address ?? '', port: r.sourcePort, identity: pod?.identity ?? 0 };
  // A resolver that is no pod the node knows is reserved:world (Cilium would name its CIDR identity).
  const server = { local: resolver, address: r.resolver.address, port: r.resolver.port, identity: resolver?.identity ?? RESERVED_IDENTITY.world };
  return r.kind === 'RESPONSE' ? [server, client] : [client, server];
}

/**
 * The Hubble flow of a DNS proxy record, as Cilium's DNS proxy reports it: egress from the pod,
 * observation source `proxy`.
 *
 * @example
 * l7DnsFlow(record, names).Summary; // 'DNS Query example.com. A'
 */
export function l7DnsFlow(r: L7DnsRecord, names: FlowNames): Flow {
  const [from, to] = dnsEnds(r, names);
  const ports = { sourcePort: from.port, destinationPort: to.port };
  const dns = { ...r.dns, observationSource: 'proxy' };
  const flow: Flow = {
    time: timestampFromNs(BigInt(r.timeNs)),
    verdict: r.verdict,
    IP: { source: from.address, destination: to.address, ipVersion: to.address.includes(':') || from.address.includes(':') ? 'IPv6' : 'IPv4' },
    l4: r.protocol === 'TCP' ? { TCP: ports } : { UDP: ports },
    source: flowEndpoint(from.local, from.identity, names.identityLabels(from.identity)),
    destination: flowEndpoint(to.local, to.identity, names.identityLabels(to.identity)),
    Type: 'L7',
    nodeName: names.nodeName,
    eventType: { type: EVENT_TYPE_L7 },
    trafficDirection: 'EGRESS',
    isReply: { value: r.kind === 'RESPONSE' },
    l7: { type: r.kind, dns },
    Summary: dnsSummary(r.kind, dns),
  };
  if (r.verdict === 'DROPPED') flow.dropReasonDesc = 'POLICY_DENIED';
  return flow;
}

/** Who hears a proxy's L7 records (the observer): listeners added and removed, each batch given to all. */
export class L7RecordFanout<R extends L7Record> {
  readonly #listeners = new Set<(records: R[]) => void>();

  onRecords(listener: (records: R[]) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  emit(records: R[]): void {
    for (const listener of this.#listeners) listener(records);
  }
}

function metricEndpoint(local: FlowEndpointInfo | undefined, identity: number): FlowMetricEndpoint {
  return { namespace: local?.namespace, podName: local?.podName || undefined, identity, workload: local?.workload?.name };
}

/**
 * A flow buffer entry of an L7 record: its Flow is built when first read (GetFlows, an export),
 * as the datapath's entries are, and the Hubble metrics read the record without building it.
 */
export class L7FlowEntry {
  seq = 0;
  readonly timeNs: bigint;
  readonly #record: L7Record;
  readonly #names: FlowNames;
  readonly #policy: (ruleKey: string) => FlowPolicy | undefined;
  #flow: Flow | undefined;

  constructor(record: L7Record, names: FlowNames, policy: (ruleKey: string) => FlowPolicy | undefined) {
    this.timeNs = BigInt(record.timeNs);
    this.#record = record;
    this.#names = names;
    this.#policy = policy;
  }

  get flow(): Flow {
    const r = this.#record;
    return (this.#flow ??= 'dns' in r ? l7DnsFlow(r, this.#names) : l7HttpFlow(r, this.#names, this.#policy));
  }

  /** What Hubble's metrics count of it: the same as flowMetricInput(this.flow). */
  metricInput(): FlowMetricInput {
    const r = this.#record;
    const response = r.kind === 'RESPONSE';
    if ('dns' in r) {
      const [from, to] = dnsEnds(r, this.#names);
      return {
        type: 'L7',
        subtype: undefined,
        verdict: r.verdict,
        dropReason: r.verdict === 'DROPPED' ? 'POLICY_DENIED' : undefined,
        protocol: r.protocol,
        ipVersion: to.address.includes(':') || from.address.includes(':') ? 6 : 4,
        tcpFlags: undefined,
        trafficDirection: 'egress',
        policyMatch: undefined,
        destinationPort: to.port,
        isReply: response,
        source: metricEndpoint(from.local, from.identity),
        destination: metricEndpoint(to.local, to.identity),
        dns: { kind: r.kind, rcode: r.dns.rcode, qtypes: r.dns.qtypes, ips: r.dns.ips.length, rrtypes: r.dns.rrtypes },
      };
    }
    const [from, to] = response ? [r.destination, r.source] : [r.source, r.destination];
    return {
      type: 'L7',
      subtype: undefined,
      verdict: r.verdict,
      dropReason: r.verdict === 'DROPPED' ? 'POLICY_DENIED' : undefined,
      protocol: 'TCP',
      ipVersion: 4,
      tcpFlags: undefined,
      trafficDirection: 'ingress',
      policyMatch: undefined,
      destinationPort: to.port,
      isReply: response,
      source: metricEndpoint(this.#names.endpointByAddress(from.address), from.identity),
      destination: metricEndpoint(this.#names.endpointByAddress(to.address), to.identity),
      http: { kind: r.kind, method: r.method, protocol: r.protocol, code: r.code, latencySeconds: r.latencyNs === undefined ? undefined : r.latencyNs / 1e9 },
    };
  }
}
