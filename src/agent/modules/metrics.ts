/**
 * Prometheus metrics: the agent's, named as Cilium's agent names them, on
 * `--prometheus-serve-addr` (Cilium's default port 9962), and Hubble's flow metrics on
 * `--hubble-metrics-server` (9965), which the observer feeds through HubbleMetricsCell.
 * @module
 */
import type { Logger } from 'pino';
import { z } from 'zod';
import { readDatapathMetrics } from '../../datapath/index.ts';
import { reservedIdentities } from '../../identity/index.ts';
import {
  HubbleMetrics,
  MetricsError,
  MetricsServer,
  NO_HUBBLE_METRICS,
  Registry,
  hubbleMetricsSetting,
  listenAddressSetting,
  parseHubbleMetrics,
  readMapPressure,
  registerAgentMetrics,
  type HubbleMetricsSink,
  type MapPressure,
} from '../../metrics/index.ts';
import { containerInterfaceKey } from '../endpoint.ts';
import { defineModule, type ModuleContext } from '../module.ts';
import { ClusterCell, EndpointsCell, HubbleMetricsCell, IdentitiesCell, NodeHealthCell, PolicyCell } from './cells.ts';

export const metricsConfig = {
  /** Cilium's --prometheus-serve-addr. Loopback by default: the metrics name pods and policies. */
  prometheusServeAddr: listenAddressSetting('localhost:9962').describe("address of the agent's Prometheus /metrics (host:port, :port for every interface; empty: off)"),
  /**
   * Counting a map's entries walks it, which for a full conntrack table is some thousand
   * syscalls: a scrape every few seconds must not pay that each time.
   */
  bpfMapPressureInterval: z.number().min(0).default(10).describe("seconds a count of the BPF maps' entries (cilium_bpf_map_pressure) is reused by later scrapes"),
};

export const hubbleMetricsConfig = {
  /** Cilium's --hubble-metrics-server. */
  hubbleMetricsServer: listenAddressSetting('localhost:9965').describe("address of Hubble's Prometheus /metrics (host:port, :port for every interface; empty: off)"),
  /**
   * Cilium's --hubble-metrics: which flow metrics, each with its context options. None by default,
   * as Cilium's (each one is counted per flow, on the observer's hot path).
   */
  hubbleMetrics: hubbleMetricsSetting([]).describe(
    "Hubble metrics to count, each name[:option=value;…] (flow, drop, tcp, policy, port-distribution, httpV2, dns; options sourceContext and destinationContext = namespace|pod|pod-name|workload|workload-name|identity|reserved-identity); none by default, as in Cilium",
  ),
};

/**
 * Listens once every module has started, as the API does: a scrape never sees a half-started
 * agent, and a port in use still fails the start, naming this module and the setting.
 */
export function serve(registry: Registry, address: string, setting: string, log: Logger, onReady: ModuleContext['onReady']): () => Promise<void> {
  let server: MetricsServer | undefined;
  onReady(async () => {
    server = await MetricsServer.listen(registry, address, setting, log);
    log.info({ address }, 'serving metrics');
  });
  return async () => {
    await server?.close();
  };
}

export const hubbleMetricsModule = defineModule({
  name: 'hubble-metrics',
  description: "Hubble's flow metrics (hubble_*), counted from the flows the observer hands over",
  config: hubbleMetricsConfig,
  needs: {},
  provides: HubbleMetricsCell,
  start(_needs, { config, log, onReady }) {
    if (config.hubbleMetricsServer === '') return { value: NO_HUBBLE_METRICS as HubbleMetricsSink };
    const options = parseHubbleMetrics(config.hubbleMetrics);
    // The schema refused bad entries already; this is for a configuration built by other means.
    if (typeof options === 'string') throw new MetricsError('ERR_METRICS_OPTION', `hubbleMetrics: ${options}`);
    const registry = new Registry();
    const metrics = new HubbleMetrics(registry, options);
    const stop = serve(registry, config.hubbleMetricsServer, 'hubbleMetricsServer', log, onReady);
    return { value: metrics as HubbleMetricsSink, stop };
  },
});

/** Cilium's endpoint states for what the endpoint reconciler says of an endpoint. */
const ENDPOINT_STATE = { done: 'ready', pending: 'regenerating', error: 'not-ready' } as const;

export const metricsModule = defineModule({
  name: 'metrics',
  description: "the agent's Prometheus metrics (cilium_*, ciliate_*), read when scraped",
  config: metricsConfig,
  needs: { identities: IdentitiesCell, policy: PolicyCell, endpoints: EndpointsCell, cluster: ClusterCell, nodeHealth: NodeHealthCell },
  start({ identities, policy, endpoints, cluster, nodeHealth }, { config, log, onReady, agentHealth }) {
    if (config.prometheusServeAddr === '') return { value: undefined };
    const registry = new Registry();
    let pressure: { at: number; maps: readonly MapPressure[] } | undefined;
    registerAgentMetrics(registry, {
      datapath: () => readDatapathMetrics(config.bpfRoot),
      endpointStates: () => {
        const states: Record<string, number> = {};
        for (const endpoint of endpoints.list()) {
          const status = endpoints.status(containerInterfaceKey(endpoint.containerId, endpoint.ifname));
          const state = status ? ENDPOINT_STATE[status.state] : 'waiting-to-regenerate';
          states[state] = (states[state] ?? 0) + 1;
        }
        return states;
      },
      policy: () => ({ rules: policy.engine.rules().length, revision: policy.revision, changes: policy.changes }),
      identities: () => ({ cluster: identities.list().length, local: identities.listLocal().length, reserved: reservedIdentities().length }),
      mapPressure: () => {
        const now = performance.now();
        if (!pressure || now - pressure.at >= config.bpfMapPressureInterval * 1000) pressure = { at: now, maps: readMapPressure(config.bpfRoot) };
        return pressure.maps;
      },
      nodes: () => ({ all: cluster.nodes.size, unreachable: nodeHealth.unreachable() }),
      agent: () => {
        const health = agentHealth();
        return { degraded: health.state === 'degraded', reconcilers: health.reconcilers };
      },
    });
    const stop = serve(registry, config.prometheusServeAddr, 'prometheusServeAddr', log, onReady);
    return { value: undefined, stop };
  },
});
