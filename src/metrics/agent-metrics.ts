/**
 * The agent's metrics, named and labelled as Cilium's agent names them (`cilium_` prefix), so
 * existing dashboards and alerts read them unchanged, plus Ciliate's own health under
 * `ciliate_`. Every metric is read from its source when scraped (a collect callback): nothing is
 * pushed on the hot paths that change them.
 * @module
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import { dropReasonDescription, type DatapathCount } from '../datapath/index.ts';
import type { MapPressure } from './map-pressure.ts';

/** Outcomes of policy changes, with Cilium's label values. */
export interface PolicyChangeCounts {
  success: number;
  fail: number;
}

/** One reconciler's health as the agent reports it. */
export interface ReconcilerMetricsInput {
  module: string;
  name: string;
  pending: number;
  errors: number;
  repairs: number;
  prunes: number;
  degraded: boolean;
}

/**
 * Where each metric comes from: plain readers the agent module wires to its cells, so this
 * subsystem depends on no agent code. Each is called once per scrape.
 */
export interface AgentMetricsSources {
  /** The kernel's drop and forward counters (ciliate_metrics, ciliate_forward_metrics). */
  datapath(): readonly DatapathCount[];
  /** Local endpoints by state (Cilium's state names: ready, regenerating, not-ready, …). */
  endpointStates(): Readonly<Record<string, number>>;
  policy(): { rules: number; revision: number; changes: PolicyChangeCounts };
  /** Identities this node knows, by type: cluster, local (CIDR), reserved. */
  identities(): Readonly<Record<string, number>>;
  mapPressure(): readonly MapPressure[];
  /** Nodes this agent knows (itself included), and how many of the others its health probes do not reach (undefined: not probing). */
  nodes(): { all: number; unreachable: number | undefined };
  agent(): { degraded: boolean; reconcilers: readonly ReconcilerMetricsInput[] };
}

/** Cilium's metrics map direction names (pkg/maps/metricsmap): INGRESS into an endpoint, EGRESS out of one. */
function metricDirection(direction: DatapathCount['direction']): string {
  return direction === 'ingress' ? 'INGRESS' : 'EGRESS';
}

/** Sums rows that map to one label set, as a reason or direction Cilium folds together must not appear twice. */
function sumBy<T>(rows: Iterable<T>, key: (row: T) => string, value: (row: T) => number): Map<string, number> {
  const sums = new Map<string, number>();
  for (const row of rows) sums.set(key(row), (sums.get(key(row)) ?? 0) + value(row));
  return sums;
}

type Read<L extends string> = (set: (labels: Partial<Record<L, string>>, value: number) => void) => void;

/**
 * A metric whose samples are all replaced by `read` on each scrape. A counter's totals live
 * elsewhere (the kernel, a manager's tally) and are copied in: monotonic as long as the source
 * is, which is what rate() needs.
 */
function collected<L extends string>(type: 'gauge' | 'counter', registry: Registry, name: string, help: string, labelNames: readonly L[], read: Read<L>): void {
  const options = { name, help, labelNames, registers: [registry] };
  if (type === 'gauge') {
    new Gauge<L>({ ...options, collect() { this.reset(); read((labels, value) => this.set(labels, value)); } });
  } else {
    new Counter<L>({ ...options, collect() { this.reset(); read((labels, value) => this.inc(labels, value)); } });
  }
}

export const gaugeOf = <L extends string>(registry: Registry, name: string, help: string, labelNames: readonly L[], read: Read<L>) => collected('gauge', registry, name, help, labelNames, read);
export const counterOf = <L extends string>(registry: Registry, name: string, help: string, labelNames: readonly L[], read: Read<L>) => collected('counter', registry, name, help, labelNames, read);

/** Registers the agent's metrics in `registry`, reading `sources` on every scrape. */
export function registerAgentMetrics(registry: Registry, sources: AgentMetricsSources): void {
  // One read of the kernel serves the packet and the byte counters of a scrape: a second read a
  // moment later would pair packets and bytes of different instants.
  type Row = { reason: string; direction: string; packets: number; bytes: number };
  let counts = { drops: new Map<string, Row>(), forwards: new Map<string, Row>() };
  let readAt = -Infinity;
  const readCounts = () => {
    if (performance.now() - readAt < 1000) return counts;
    readAt = performance.now();
    counts = { drops: new Map(), forwards: new Map() };
    for (const count of sources.datapath()) {
      const forwarded = count.reason === 0;
      const reason = forwarded ? '' : dropReasonDescription(count.reason);
      const direction = metricDirection(count.direction);
      const rows = forwarded ? counts.forwards : counts.drops;
      const key = `${reason}\0${direction}`;
      const row = rows.get(key) ?? { reason, direction, packets: 0, bytes: 0 };
      row.packets += count.packets;
      row.bytes += count.bytes;
      rows.set(key, row);
    }
    return counts;
  };
  counterOf(registry, 'cilium_drop_count_total', 'Total dropped packets, tagged by drop reason and ingress/egress direction', ['reason', 'direction'], (set) => {
    for (const row of readCounts().drops.values()) set({ reason: row.reason, direction: row.direction }, row.packets);
  });
  counterOf(registry, 'cilium_drop_bytes_total', 'Total dropped bytes, tagged by drop reason and ingress/egress direction', ['reason', 'direction'], (set) => {
    for (const row of readCounts().drops.values()) set({ reason: row.reason, direction: row.direction }, row.bytes);
  });
  counterOf(registry, 'cilium_forward_count_total', 'Total forwarded packets, tagged by ingress/egress direction', ['direction'], (set) => {
    for (const row of readCounts().forwards.values()) set({ direction: row.direction }, row.packets);
  });
  counterOf(registry, 'cilium_forward_bytes_total', 'Total forwarded bytes, tagged by ingress/egress direction', ['direction'], (set) => {
    for (const row of readCounts().forwards.values()) set({ direction: row.direction }, row.bytes);
  });

  gaugeOf(registry, 'cilium_endpoint', 'Number of endpoints managed by this agent', [], (set) => {
    set({}, Object.values(sources.endpointStates()).reduce((sum, n) => sum + n, 0));
  });
  gaugeOf(registry, 'cilium_endpoint_state', 'Count of all endpoints, tagged by different endpoint states', ['endpoint_state'], (set) => {
    for (const [state, count] of Object.entries(sources.endpointStates())) set({ endpoint_state: state }, count);
  });

  gaugeOf(registry, 'cilium_policy', 'Number of policy rules currently loaded', [], (set) => set({}, sources.policy().rules));
  gaugeOf(registry, 'cilium_policy_max_revision', 'Highest policy revision number in the agent', [], (set) => set({}, sources.policy().revision));
  counterOf(registry, 'cilium_policy_change_total', 'Number of policy changes (imports and deletes) by outcome', ['outcome'], (set) => {
    const { changes } = sources.policy();
    set({ outcome: 'success' }, changes.success);
    set({ outcome: 'fail' }, changes.fail);
  });

  gaugeOf(registry, 'cilium_identity', 'Number of identities currently allocated, by type', ['type'], (set) => {
    for (const [type, count] of Object.entries(sources.identities())) set({ type }, count);
  });

  gaugeOf(registry, 'cilium_nodes_all_num', 'Number of nodes managed', [], (set) => set({}, sources.nodes().all));
  gaugeOf(registry, 'cilium_unreachable_nodes', 'Number of nodes that cannot be reached', [], (set) => {
    const { unreachable } = sources.nodes();
    if (unreachable !== undefined) set({}, unreachable);
  });

  gaugeOf(registry, 'cilium_bpf_map_pressure', 'Fill percentage of BPF maps, as entries / max_entries (0 to 1), tagged by map name', ['map_name'], (set) => {
    for (const pressure of sources.mapPressure()) set({ map_name: pressure.mapName }, pressure.ratio);
  });

  gaugeOf(registry, 'ciliate_agent_degraded', "1 while the agent is degraded (a module's health or reconciler keeps failing; `ciliate status` says why), else 0", [], (set) => {
    set({}, sources.agent().degraded ? 1 : 0);
  });
  const reconcilerLabels = ['module', 'reconciler'] as const;
  const eachReconciler = (set: (labels: Partial<Record<(typeof reconcilerLabels)[number], string>>, value: number) => void, value: (r: ReconcilerMetricsInput) => number) => {
    const rows = sources.agent().reconcilers;
    for (const [key, total] of sumBy(rows, (r) => `${r.module}\0${r.name}`, value)) {
      const [module, reconciler] = key.split('\0');
      set({ module, reconciler }, total);
    }
  };
  gaugeOf(registry, 'ciliate_reconciler_degraded', '1 while a reconciler keeps failing, else 0', reconcilerLabels, (set) => eachReconciler(set, (r) => (r.degraded ? 1 : 0)));
  gaugeOf(registry, 'ciliate_reconciler_errors', 'Objects whose last write into the kernel failed (being retried)', reconcilerLabels, (set) => eachReconciler(set, (r) => r.errors));
  gaugeOf(registry, 'ciliate_reconciler_pending', 'Objects not yet written into the kernel as wanted', reconcilerLabels, (set) => eachReconciler(set, (r) => r.pending));
  counterOf(registry, 'ciliate_reconciler_repairs_total', 'Kernel objects found drifted by a refresh and rewritten', reconcilerLabels, (set) => eachReconciler(set, (r) => r.repairs));
  counterOf(registry, 'ciliate_reconciler_prunes_total', 'Kernel objects nobody wanted, removed by a refresh', reconcilerLabels, (set) => eachReconciler(set, (r) => r.prunes));
}
