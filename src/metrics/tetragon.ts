/**
 * The runtime sensor's metrics with Tetragon's names (docs/reference/metrics.md), so Tetragon's
 * dashboards read them: events by type and workload, the process cache's size, capacity,
 * evictions and misses, and ring buffer records received and lost. Everything but the event
 * counter is read from its source at scrape time.
 * @module
 */
import { Counter, type Registry } from 'prom-client';
import { counterOf, gaugeOf } from './agent-metrics.ts';

export interface TetragonMetricsSources {
  processCache(): { size: number; capacity: number; evictions: number; misses: number };
  ringbuf(): { received: number; lost: bigint };
}

export interface TetragonEventLabels {
  type: string;
  namespace: string;
  workload: string;
  pod: string;
  binary: string;
}

export class TetragonMetrics {
  readonly #events: Counter<keyof TetragonEventLabels>;

  constructor(registry: Registry, sources: TetragonMetricsSources) {
    this.#events = new Counter({ name: 'tetragon_events_total', help: 'The total number of Tetragon events', labelNames: ['type', 'namespace', 'workload', 'pod', 'binary'], registers: [registry] });
    gaugeOf(registry, 'tetragon_process_cache_size', 'The size of the process cache', [], (set) => set({}, sources.processCache().size));
    gaugeOf(registry, 'tetragon_process_cache_capacity', 'The capacity of the process cache. Expected to be constant.', [], (set) => set({}, sources.processCache().capacity));
    counterOf(registry, 'tetragon_process_cache_evictions_total', 'Number of process cache LRU evictions.', [], (set) => set({}, sources.processCache().evictions));
    counterOf(registry, 'tetragon_process_cache_misses_total', 'Number of process cache misses.', [], (set) => set({}, sources.processCache().misses));
    counterOf(registry, 'tetragon_observer_ringbuf_events_received_total', 'Number of perf events Tetragon ring buffer received.', [], (set) => set({}, sources.ringbuf().received));
    counterOf(registry, 'tetragon_observer_ringbuf_events_lost_total', 'Number of perf events Tetragon ring buffer lost.', [], (set) => set({}, Number(sources.ringbuf().lost)));
  }

  /** Counts one exported event. */
  event(labels: TetragonEventLabels): void {
    this.#events.inc(labels);
  }
}
