/**
 * L7 flows: what the node proxy reports of each HTTP exchange, as Hubble shows it (`Type: L7`,
 * event type 129, `l7.http`): a REQUEST when the proxy decided (FORWARDED or DROPPED, with the
 * rules that allowed it) and a RESPONSE with the code and the latency.
 * @module
 */
import type { FlowMetricEndpoint, FlowMetricInput } from '../metrics/index.ts';
import { flowEndpoint, type FlowEndpointInfo, type FlowNames } from './flow.ts';
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
}

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
    trafficDirection: 'INGRESS',
    isReply: { value: response },
    l7: {
      type: r.kind,
      latencyNs: r.latencyNs === undefined ? undefined : String(r.latencyNs),
      http: { code: r.code, method: r.method, url: r.url, protocol: r.protocol },
    },
    Summary: response ? `${r.protocol} ${r.code} ${Math.round((r.latencyNs ?? 0) / 1e6)}ms (${r.method} ${r.url})` : `${r.protocol} ${r.method} ${r.url}`,
  };
  if (!response && r.verdict === 'FORWARDED' && r.ruleKeys) {
    flow.ingressAllowedBy = r.ruleKeys.map(policy).filter((p): p is FlowPolicy => p !== undefined);
  }
  if (r.verdict === 'DROPPED') flow.dropReasonDesc = 'POLICY_DENIED';
  return flow;
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
  readonly #record: L7HttpRecord;
  readonly #names: FlowNames;
  readonly #policy: (ruleKey: string) => FlowPolicy | undefined;
  #flow: Flow | undefined;

  constructor(record: L7HttpRecord, names: FlowNames, policy: (ruleKey: string) => FlowPolicy | undefined) {
    this.timeNs = BigInt(record.timeNs);
    this.#record = record;
    this.#names = names;
    this.#policy = policy;
  }

  get flow(): Flow {
    return (this.#flow ??= l7HttpFlow(this.#record, this.#names, this.#policy));
  }

  /** What Hubble's metrics count of it: the same as flowMetricInput(this.flow). */
  metricInput(): FlowMetricInput {
    const r = this.#record;
    const response = r.kind === 'RESPONSE';
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
