/**
 * Hubble's flow metrics (`hubble_` prefix, served apart from the agent's, on Cilium's port 9965):
 * the observer hands each flow to HubbleMetrics.observeFlow() and each loss to lostEvents(); the
 * metrics `--hubble-metrics` enables count them with Hubble's names, labels and context options.
 * Counts wait per label set in plain Maps and reach prom-client when scraped: they run per flow.
 * @module
 */
import { Counter, Histogram, type Registry } from 'prom-client';
import type { ContextKind, HubbleMetricName, HubbleMetricOptions } from './hubble-options.ts';

/** A flow's source or destination, as far as the observer knows it. */
export interface FlowMetricEndpoint {
  namespace?: string;
  podName?: string;
  /** Security identity number. */
  identity?: number;
  /** Hubble's name of a reserved identity (`host`, `world`, …), for the reserved-identity context. */
  reservedIdentityName?: string;
  /** The pod's workload (its Deployment, DaemonSet, … name). */
  workload?: string;
}

export interface FlowMetricTcpFlags {
  SYN?: boolean;
  ACK?: boolean;
  FIN?: boolean;
  RST?: boolean;
  PSH?: boolean;
  URG?: boolean;
  ECE?: boolean;
  CWR?: boolean;
  NS?: boolean;
}

/**
 * What the metrics need of one flow, as plain fields (no protobuf): the observer fills it from
 * the flow it built.
 */
export interface FlowMetricInput {
  /** Hubble's flow type for `type`: Trace, Drop, PolicyVerdict, L7, Capture or Unknown. */
  type: 'Trace' | 'Drop' | 'PolicyVerdict' | 'L7' | 'Capture' | 'Unknown';
  /** The `subtype` label: a trace's observation point (`to-endpoint`, `to-stack`, …); empty otherwise. */
  subtype?: string;
  /** Hubble's Verdict name: FORWARDED, DROPPED, ERROR, AUDIT, REDIRECTED, TRACED, TRANSLATED. */
  verdict: string;
  /** Hubble's DropReason name when dropped (POLICY_DENIED, …). */
  dropReason?: string;
  /** TCP, UDP, ICMPv4, ICMPv6, SCTP; undefined when the flow has no L4 Hubble knows. */
  protocol?: string;
  ipVersion?: 4 | 6;
  tcpFlags?: FlowMetricTcpFlags;
  /** ingress, egress or unknown. */
  trafficDirection?: 'ingress' | 'egress' | 'unknown';
  /** For policy verdicts: the kind of entry that decided (Cilium's names: l3-only, l3-l4, l4-only, all, none, …). */
  policyMatch?: string;
  destinationPort?: number;
  /** false for a request, true for a reply; undefined when conntrack did not say. */
  isReply?: boolean;
  source?: FlowMetricEndpoint;
  destination?: FlowMetricEndpoint;
  /** L7 HTTP flows: what the request said, and for a response its code and latency. */
  http?: { kind: 'REQUEST' | 'RESPONSE'; method: string; protocol: string; code?: number; latencySeconds?: number };
  /** L7 DNS flows: the question's types, and for an answer its rcode, how many addresses and which record types. */
  dns?: { kind: 'REQUEST' | 'RESPONSE'; rcode: number; qtypes: readonly string[]; ips: number; rrtypes: readonly string[] };
}

/** Where events were lost, with Hubble's `source` label values. */
export type LostEventSource = 'perf_event_ring_buffer' | 'observer_events_queue' | 'hubble_ring_buffer';

/** What the observer calls: the Hubble metrics, or a sink that drops everything when they are off. */
export interface HubbleMetricsSink {
  /** Whether any flow metric is on: when none is, the observer hands over no flow at all. */
  readonly countsFlows: boolean;
  observeFlow(flow: FlowMetricInput): void;
  lostEvents(source: LostEventSource, count: number): void;
}

/** A sink for when the Hubble metrics server is off. */
export const NO_HUBBLE_METRICS: HubbleMetricsSink = {
  countsFlows: false,
  observeFlow() {},
  lostEvents() {},
};

function contextValue(kinds: readonly ContextKind[], endpoint: FlowMetricEndpoint | undefined): string {
  if (!endpoint) return '';
  for (const kind of kinds) {
    const value = contextOf(kind, endpoint);
    if (value) return value;
  }
  return '';
}

function contextOf(kind: ContextKind, e: FlowMetricEndpoint): string | undefined {
  switch (kind) {
    case 'namespace':
      return e.namespace;
    case 'pod':
      return e.podName && (e.namespace ? `${e.namespace}/${e.podName}` : e.podName);
    case 'pod-name':
      return e.podName;
    case 'workload':
      return e.workload && (e.namespace ? `${e.namespace}/${e.workload}` : e.workload);
    case 'workload-name':
      return e.workload;
    case 'identity':
      return e.identity === undefined ? undefined : String(e.identity);
    case 'reserved-identity':
      return e.reservedIdentityName;
  }
}

/** One enabled metric: its counter and how a flow becomes label values (none: not counted). */
interface Handler {
  observe(flow: FlowMetricInput): void;
}

/** The TCP flags Hubble counts, each flow counting once per flag it carries (SYN with ACK is SYN-ACK). */
function tcpFlagNames(flags: FlowMetricTcpFlags): string[] {
  const names: string[] = [];
  if (flags.SYN) names.push(flags.ACK ? 'SYN-ACK' : 'SYN');
  if (flags.FIN) names.push('FIN');
  if (flags.RST) names.push('RST');
  return names;
}

/** The `rcode` label of Hubble's dns metrics, by response code. */
const DNS_RCODE_LABELS: Readonly<Record<number, string>> = {
  0: 'No Error',
  1: 'Format Error',
  2: 'Server Failure',
  3: 'Non-Existent Domain',
  4: 'Not Implemented',
  5: 'Query Refused',
};

const forwarded = (flow: FlowMetricInput) => flow.verdict === 'FORWARDED' || flow.verdict === 'REDIRECTED';

/**
 * Label sets a counter holds counts for at once before they are added to it: contexts (pods,
 * identities) can be many and churn, and this cache must not grow with them. The counter itself
 * keeps every label set it was given, as Hubble's do.
 */
export const PENDING_LABEL_SETS = 4096;

/** A label set's count not yet added to its counter. */
interface Pending {
  readonly labels: Record<string, string>;
  count: number;
}

/** Label values, one level per label, down to the pending count of that label set. */
type PendingTree = Map<string, PendingTree | Pending>;

/**
 * Counts by label set, added to the counter when it is scraped (its collect()) or when this many
 * label sets wait: prom-client's inc() with a label object hashes the object each time (its
 * labels() children too), which cost more than the flow it counted. The label sets are found by
 * their values one at a time (a tree of Maps): no key string is built per flow, and two label
 * sets cannot share one.
 */
class PendingCounts {
  readonly #labelNames: readonly string[];
  readonly #counter: Counter<string>;
  #root: PendingTree = new Map();
  #sets: Pending[] = [];
  /** The label values last counted and their pending count: a run of flows alike (a busy
   * connection's, a port's requests) skips the walk down the tree, whose Map lookups were most of
   * what a flow cost the metrics. */
  #lastValues: readonly string[] | undefined;
  #lastPending: Pending | undefined;

  /** Registers the counter, which adds what is pending whenever it is collected. */
  constructor(registry: Registry, name: string, help: string, labelNames: string[]) {
    this.#labelNames = labelNames;
    this.#counter = new Counter<string>({ name, help, labelNames, registers: [registry], collect: () => this.flush() });
  }

  /** Counts one for the label set with these values, in the order of the label names. */
  add(values: readonly string[]): void {
    const lastValues = this.#lastValues;
    if (lastValues !== undefined && lastValues.length === values.length) {
      let same = true;
      for (let i = 0; i < values.length && same; i++) same = lastValues[i] === values[i];
      if (same) {
        this.#lastPending!.count++;
        return;
      }
    }
    let node = this.#root;
    const last = values.length - 1;
    for (let i = 0; i < last; i++) {
      let next = node.get(values[i]) as PendingTree | undefined;
      if (next === undefined) node.set(values[i], (next = new Map()));
      node = next;
    }
    const pending = node.get(values[last]) as Pending | undefined;
    if (pending !== undefined) {
      pending.count++;
      this.#lastValues = values;
      this.#lastPending = pending;
      return;
    }
    if (this.#sets.length >= PENDING_LABEL_SETS) {
      this.flush();
      this.#root = new Map();
      this.#sets = [];
      this.#lastValues = undefined;
      this.add(values);
      return;
    }
    const labels: Record<string, string> = {};
    for (let i = 0; i <= last; i++) labels[this.#labelNames[i]] = values[i];
    const created: Pending = { labels, count: 1 };
    node.set(values[last], created);
    this.#sets.push(created);
    this.#lastValues = values;
    this.#lastPending = created;
  }

  /** Adds what was counted to the counter; the label sets stay, with nothing pending. */
  flush(): void {
    for (const pending of this.#sets) {
      if (pending.count === 0) continue;
      this.#counter.inc(pending.labels, pending.count);
      pending.count = 0;
    }
  }
}

export class HubbleMetrics implements HubbleMetricsSink {
  readonly #handlers: Handler[] = [];
  readonly #lost: Counter<'source'>;

  /** Registers the metrics `options` enables, and hubble_lost_events_total, which is always on. */
  constructor(registry: Registry, options: readonly HubbleMetricOptions[]) {
    for (const option of options) this.#handlers.push(this.#handler(registry, option));
    this.#lost = new Counter({ name: 'hubble_lost_events_total', help: 'Number of lost events', labelNames: ['source'], registers: [registry] });
  }

  get countsFlows(): boolean {
    return this.#handlers.length > 0;
  }

  observeFlow(flow: FlowMetricInput): void {
    for (const handler of this.#handlers) handler.observe(flow);
  }

  lostEvents(source: LostEventSource, count: number): void {
    if (count > 0) this.#lost.inc({ source }, count);
  }

  #handler(registry: Registry, option: HubbleMetricOptions): Handler {
    const sourceContext = option.sourceContext.length > 0;
    const destinationContext = option.destinationContext.length > 0;
    const contextLabels = [...(sourceContext ? ['source'] : []), ...(destinationContext ? ['destination'] : [])];
    const counter = (name: string, help: string, labels: string[]) => new PendingCounts(registry, `hubble_${name}`, help, [...contextLabels, ...labels]);
    // The flow's context values before the metric's own, as the label names are ordered.
    const count = (c: PendingCounts, f: FlowMetricInput, own: string[]): void => {
      if (!sourceContext && !destinationContext) return c.add(own);
      const values: string[] = [];
      if (sourceContext) values.push(contextValue(option.sourceContext, f.source));
      if (destinationContext) values.push(contextValue(option.destinationContext, f.destination));
      for (const value of own) values.push(value);
      c.add(values);
    };
    const handlers: Record<HubbleMetricName, () => Handler> = {
      flow: () => {
        const c = counter('flows_processed_total', 'Total number of flows processed', ['protocol', 'type', 'subtype', 'verdict']);
        return { observe: (f) => count(c, f, [f.protocol ?? '', f.type, f.subtype ?? '', f.verdict]) };
      },
      drop: () => {
        const c = counter('drop_total', 'Number of drops', ['reason', 'protocol']);
        return {
          observe: (f) => {
            if (f.verdict !== 'DROPPED') return;
            count(c, f, [f.dropReason ?? 'DROP_REASON_UNKNOWN', f.protocol ?? '']);
          },
        };
      },
      tcp: () => {
        const c = counter('tcp_flags_total', 'TCP flag occurrences', ['flag', 'family']);
        return {
          observe: (f) => {
            if (f.protocol !== 'TCP' || !f.tcpFlags || !forwarded(f)) return;
            const family = f.ipVersion === 6 ? 'IPv6' : 'IPv4';
            for (const flag of tcpFlagNames(f.tcpFlags)) count(c, f, [flag, family]);
          },
        };
      },
      policy: () => {
        const c = counter('policy_verdicts_total', 'Number of policy verdicts', ['direction', 'match', 'action']);
        return {
          observe: (f) => {
            if (f.type !== 'PolicyVerdict') return;
            count(c, f, [f.trafficDirection ?? 'unknown', f.policyMatch ?? 'none', f.verdict.toLowerCase()]);
          },
        };
      },
      // Cilium's httpV2, from the node proxy's responses (`reporter` is server: ingress rules only).
      httpV2: () => {
        const requests = counter('http_requests_total', 'Count of HTTP requests', ['method', 'protocol', 'status', 'reporter']);
        const labelNames = [...contextLabels, 'method', 'reporter'];
        const duration = new Histogram({ name: 'hubble_http_request_duration_seconds', help: 'Quantiles of HTTP request duration in seconds', labelNames, registers: [registry] });
        return {
          observe: (f) => {
            const http = f.http;
            if (!http || http.kind !== 'RESPONSE') return;
            const reporter = f.trafficDirection === 'egress' ? 'client' : 'server';
            // A response flow goes from the server to the client; Hubble labels it as its request.
            const asRequest = { ...f, source: f.destination, destination: f.source };
            count(requests, asRequest, [http.method, http.protocol, String(http.code ?? 0), reporter]);
            if (http.latencySeconds === undefined) return;
            const labels: Record<string, string> = { method: http.method, reporter };
            if (sourceContext) labels.source = contextValue(option.sourceContext, asRequest.source);
            if (destinationContext) labels.destination = contextValue(option.destinationContext, asRequest.destination);
            duration.observe(labels, http.latencySeconds);
          },
        };
      },
      // Hubble's dns handler: queries from requests, responses (and their record types) from answers.
      dns: () => {
        const queries = counter('dns_queries_total', 'Number of DNS queries observed', ['rcode', 'qtypes', 'ips_returned']);
        const responses = counter('dns_responses_total', 'Number of DNS responses observed', ['rcode', 'qtypes', 'ips_returned']);
        const types = counter('dns_response_types_total', 'Number of DNS response types', ['type', 'qtypes']);
        return {
          observe: (f) => {
            const dns = f.dns;
            if (!dns) return;
            const qtypes = dns.qtypes.join(',');
            if (dns.kind === 'REQUEST') return count(queries, f, ['', qtypes, '']);
            count(responses, f, [DNS_RCODE_LABELS[dns.rcode] ?? String(dns.rcode), qtypes, String(dns.ips)]);
            for (const type of dns.rrtypes) count(types, f, [type, qtypes]);
          },
        };
      },
      'port-distribution': () => {
        const c = counter('port_distribution_total', 'Numbers of packets distributed by destination port', ['protocol', 'port']);
        return {
          observe: (f) => {
            // Requests only, as Hubble: a reply's destination port is the client's ephemeral one, and a
            // flow not known to be a request (isReply undefined) is not counted either.
            if (!forwarded(f) || f.isReply !== false || f.destinationPort === undefined || f.protocol === undefined) return;
            count(c, f, [f.protocol, String(f.destinationPort)]);
          },
        };
      },
    };
    return handlers[option.name]();
  }
}

/** The fields of a Hubble flow that its metrics read (src/observer's Flow has them all). */
export interface FlowForMetrics {
  verdict?: string;
  dropReasonDesc?: string | number;
  eventType?: { type?: number; subType?: number };
  l4?: { TCP?: { destinationPort?: number; flags?: FlowMetricTcpFlags }; UDP?: { destinationPort?: number }; ICMPv4?: unknown; ICMPv6?: unknown; SCTP?: { destinationPort?: number } };
  IP?: { ipVersion?: string };
  trafficDirection?: string;
  policyMatchType?: number;
  traceObservationPoint?: string;
  isReply?: { value?: boolean };
  source?: { namespace?: string; podName?: string; identity?: number; workloads?: { name?: string }[] };
  destination?: { namespace?: string; podName?: string; identity?: number; workloads?: { name?: string }[] };
  l7?: {
    type?: string;
    latencyNs?: string;
    http?: { code?: number; method?: string; protocol?: string };
    dns?: { rcode?: number; qtypes?: string[]; ips?: string[]; rrtypes?: string[] };
  };
}

/** Monitor event types (Cilium's): what the `type` label of a flow's metrics says. */
export const FLOW_METRIC_TYPES: Readonly<Record<number, FlowMetricInput['type']>> = { 1: 'Drop', 4: 'Trace', 5: 'PolicyVerdict', 129: 'L7' };
/** Cilium's policy match names, by the match type a verdict carries. */
export const POLICY_MATCHES: Readonly<Record<number, string>> = { 0: 'none', 1: 'l3-only', 2: 'l3-l4', 3: 'l4-only', 4: 'all' };

/** A trace's `subtype` label: its observation point (Hubble's name, TO_ENDPOINT) in kebab case. */
export function traceSubtypeLabel(observationPoint: string): string {
  return observationPoint.toLowerCase().replaceAll('_', '-');
}

/**
 * What the Hubble metrics count of one Flow. The observer gives the same of its buffer entries
 * without building their Flow (FlowEntry.metricInput()); a test holds the two together.
 */
export function flowMetricInput(flow: FlowForMetrics): FlowMetricInput {
  const l4 = flow.l4;
  const protocol = l4?.TCP ? 'TCP' : l4?.UDP ? 'UDP' : l4?.SCTP ? 'SCTP' : l4?.ICMPv4 ? 'ICMPv4' : l4?.ICMPv6 ? 'ICMPv6' : undefined;
  const endpoint = (e: FlowForMetrics['source']): FlowMetricEndpoint | undefined =>
    e && { namespace: e.namespace, podName: e.podName, identity: e.identity, workload: e.workloads?.[0]?.name };
  const type = FLOW_METRIC_TYPES[flow.eventType?.type ?? -1] ?? 'Unknown';
  return {
    type,
    subtype: type === 'Trace' && flow.traceObservationPoint !== undefined ? traceSubtypeLabel(flow.traceObservationPoint) : undefined,
    verdict: flow.verdict ?? 'VERDICT_UNKNOWN',
    dropReason: typeof flow.dropReasonDesc === 'string' ? flow.dropReasonDesc : undefined,
    protocol,
    ipVersion: flow.IP?.ipVersion === 'IPv6' ? 6 : flow.IP ? 4 : undefined,
    tcpFlags: l4?.TCP?.flags,
    trafficDirection: flow.trafficDirection === 'INGRESS' ? 'ingress' : flow.trafficDirection === 'EGRESS' ? 'egress' : 'unknown',
    policyMatch: type === 'PolicyVerdict' ? POLICY_MATCHES[flow.policyMatchType ?? 0] : undefined,
    destinationPort: l4?.TCP?.destinationPort ?? l4?.UDP?.destinationPort ?? l4?.SCTP?.destinationPort,
    isReply: flow.isReply?.value,
    source: endpoint(flow.source),
    destination: endpoint(flow.destination),
    // Only an L7 flow has the key, as only an L7 entry's own metric input has it.
    ...(flow.l7?.http && {
      http: {
        kind: flow.l7.type === 'RESPONSE' ? 'RESPONSE' : 'REQUEST',
        method: flow.l7.http.method ?? '',
        protocol: flow.l7.http.protocol ?? '',
        code: flow.l7.http.code,
        latencySeconds: flow.l7.latencyNs === undefined ? undefined : Number(flow.l7.latencyNs) / 1e9,
      },
    }),
    ...(flow.l7?.dns && {
      dns: {
        kind: flow.l7.type === 'RESPONSE' ? 'RESPONSE' : 'REQUEST',
        rcode: flow.l7.dns.rcode ?? 0,
        qtypes: flow.l7.dns.qtypes ?? [],
        ips: flow.l7.dns.ips?.length ?? 0,
        rrtypes: flow.l7.dns.rrtypes ?? [],
      },
    }),
  };
}

/** Hubble's LostEvent source names as the metric's `source` label spells them. */
export function lostEventSourceLabel(source: string): LostEventSource | undefined {
  const label = source.toLowerCase();
  return label === 'perf_event_ring_buffer' || label === 'observer_events_queue' || label === 'hubble_ring_buffer' ? label : undefined;
}
