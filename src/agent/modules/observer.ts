/**
 * Hubble on the agent: every datapath event becomes a flow named by endpoints, identities and
 * the rules that decided, kept in a bounded buffer and served over Hubble's gRPC Observer API
 * on a root-only Unix socket and on TCP.
 * @module
 */
import { dirname, join } from 'node:path';
import { z } from 'zod';
import { listenAddressSetting, lostEventSourceLabel } from '../../metrics/index.ts';
import { FlowObserver, L7FlowEntry, ObserverServer, bindAddress, readServerTls, peerStoreKey, publishedAddress, type FlowEndpointInfo, type FlowNames, type FlowPolicy, type HubblePeerRecord, type L7Record } from '../../observer/index.ts';
import { ConfigError } from '../config.ts';
import { defineModule } from '../module.ts';
import { VERSION } from '../version.ts';
import { flowExportConfig, startFlowExport } from './flow-export.ts';
import { apiConfig } from './api.ts';
import { ClusterCell, DnsProxyCell, EndpointsCell, HubbleMetricsCell, IdentitiesCell, MonitorCell, NodeCell, PolicyCell, ProxyCell, StoreCell } from './cells.ts';

export const observerConfig = {
  hubbleEnabled: z.boolean().default(true).describe("flows and Hubble's Observer API (Cilium's enable-hubble)"),
  hubbleBufferCapacity: z.number().int().min(1).max(1 << 20).default(4095).describe("flows the buffer keeps (Cilium's hubble-event-buffer-capacity)"),
  hubbleEventQueueSize: z.number().int().min(1).max(1 << 20).default(8192).describe("datapath events waiting to become flows before new ones are dropped and counted lost (Cilium's hubble-event-queue-size)"),
  hubbleSocketPath: z.string().default('').describe('the Observer API Unix socket, root only (default: hubble.sock beside --socket-path)'),
  hubbleListenAddress: listenAddressSetting('localhost:4244').describe("the Observer API on TCP, host:port (:port: every address, published to relays as the node IP); empty: Unix socket only (Cilium's hubble-listen-address)"),
  hubbleTlsCertFile: z.string().default('').describe('TLS certificate (PEM) for the TCP listener; with the key, the listener is TLS only'),
  hubbleTlsKeyFile: z.string().default('').describe('TLS private key (PEM) for the TCP listener'),
  hubbleTlsClientCaFiles: z.array(z.string()).default([]).describe('CAs (PEM) of client certificates the TCP listener requires, comma-separated; none: no client certificate asked'),
  ...flowExportConfig,
};

export const observerModule = defineModule({
  name: 'observer',
  description: "flows from datapath events, the flow buffer and Hubble's Observer API",
  // The API socket's setting too: the Observer socket goes beside it unless told otherwise.
  config: { ...observerConfig, socketPath: apiConfig.socketPath },
  needs: { monitor: MonitorCell, endpoints: EndpointsCell, identities: IdentitiesCell, policy: PolicyCell, node: NodeCell, cluster: ClusterCell, hubbleMetrics: HubbleMetricsCell, store: StoreCell, proxy: ProxyCell, dnsProxy: DnsProxyCell },
  async start({ monitor, endpoints, identities, policy, node, cluster, hubbleMetrics, store, proxy, dnsProxy }, { config, log }) {
    if (!config.hubbleEnabled) return { value: undefined, status: () => ({ observer: { enabled: false } }) };
    if (Boolean(config.hubbleTlsCertFile) !== Boolean(config.hubbleTlsKeyFile)) {
      throw new ConfigError('observer: --hubble-tls-cert-file and --hubble-tls-key-file go together; set both or neither');
    }
    let byAddress = new Map<string, FlowEndpointInfo>();
    let byId = new Map<number, FlowEndpointInfo>();
    let indexedLocal = -1;
    let indexedRemote = -1;
    // Rebuilt when the endpoints tables have changed, not per event: a busy datapath asks per
    // packet (so two numbers compared, no string made).
    const index = () => {
      if (endpoints.table.revision === indexedLocal && cluster.remoteEndpoints.revision === indexedRemote) return;
      indexedLocal = endpoints.table.revision;
      indexedRemote = cluster.remoteEndpoints.revision;
      const local = endpoints.list().map((e) => ({ address: e.ipv4, info: { id: e.id, identity: e.identity, address: e.ipv4, namespace: e.namespace, podName: e.podName ?? e.containerId, workload: e.workload } }));
      // Remote pods have no endpoint id here (ids are per node); local ones win an address clash.
      const remote = [...cluster.remoteEndpoints.all()].map((e) => ({ address: e.ipv4, info: { id: 0, identity: e.identity, namespace: e.namespace, podName: e.podName, workload: e.workload } }));
      byAddress = new Map([...remote, ...local].map(({ address, info }) => [address, info]));
      byId = new Map(local.map(({ info }) => [info.id, info]));
    };
    const labelsById = new Map<number, readonly string[]>();
    const unsubscribe = identities.subscribe((change) => labelsById.delete(change.identity.id));
    const names: FlowNames = {
      nodeName: config.nodeName,
      endpointByAddress(address) {
        index();
        return byAddress.get(address);
      },
      endpointById(id) {
        index();
        return byId.get(id);
      },
      identityLabels(id) {
        let labels = labelsById.get(id);
        if (labels === undefined) {
          const identity = identities.get(id);
          if (!identity) return undefined;
          labels = identity.labels.toStrings();
          labelsById.set(id, labels);
        }
        return labels;
      },
      policyForCookie(cookie): FlowPolicy | undefined {
        const rule = policy.engine.ruleById(cookie);
        if (!rule) return undefined;
        return {
          name: rule.name,
          namespace: rule.namespace,
          kind: rule.kind,
          labels: Object.entries(rule.labels).map(([key, value]) => `${key}=${value}`),
          revision: String(policy.revision),
        };
      },
    };
    const observer = new FlowObserver(monitor, {
      capacity: config.hubbleBufferCapacity,
      queueSize: config.hubbleEventQueueSize,
      names,
      log,
      // Nothing per flow when no flow metric is on: the flow path is the observer's hot path.
      onFlow: hubbleMetrics.countsFlows ? (entry) => hubbleMetrics.observeFlow(entry.metricInput()) : undefined,
      onLost: (source, count) => {
        const label = lostEventSourceLabel(source);
        if (label) hubbleMetrics.lostEvents(label, count);
      },
    });
    const server = new ObserverServer({
      observer,
      nodeName: config.nodeName,
      nodeAddress: node.record.nodeIp,
      version: VERSION,
      namespaces: () => {
        const seen = new Set<string>();
        for (const e of endpoints.list()) seen.add(e.namespace ?? 'default');
        for (const identity of identities.list()) if (identity.labels.namespace) seen.add(identity.labels.namespace);
        return [...seen].sort();
      },
      log,
    });
    const socketPath = config.hubbleSocketPath || join(dirname(config.socketPath), 'hubble.sock');
    // Before the observer starts, so the export files get every flow from the first.
    const flowExport = await startFlowExport(observer, config, log).catch((error: unknown) => {
      unsubscribe();
      throw error;
    });
    observer.start();
    // The node proxy's HTTP exchanges, as L7 flows beside the datapath's.
    const policyByKey = (key: string) => {
      const id = policy.engine.ruleId(key);
      return id === undefined ? undefined : names.policyForCookie(id);
    };
    const pushL7 = (records: readonly L7Record[]) => {
      for (const r of records) {
        const entry = new L7FlowEntry(r, names, policyByKey);
        observer.ring.pushEntry(entry);
        if (hubbleMetrics.countsFlows) hubbleMetrics.observeFlow(entry.metricInput());
      }
    };
    // And the DNS proxy's queries.
    const stopHttp = proxy.onRecords(pushL7);
    const stopDns = dnsProxy.onRecords(pushL7);
    const stopL7 = () => {
      stopHttp();
      stopDns();
    };
    // Relays find this node's Observer API here; only a TCP listener can be dialled from elsewhere.
    let peer: HubblePeerRecord | undefined;
    try {
      await server.listenUnix(socketPath);
      if (config.hubbleListenAddress) {
        const files = { certFile: config.hubbleTlsCertFile, keyFile: config.hubbleTlsKeyFile, clientCaFiles: config.hubbleTlsClientCaFiles };
        const tls = config.hubbleTlsCertFile ? readServerTls(files, { cert: 'hubble-tls-cert-file', key: 'hubble-tls-key-file', cas: 'hubble-tls-client-ca-files' }) : undefined;
        await server.listenTcp(bindAddress(config.hubbleListenAddress), tls);
        peer = { name: config.nodeName, address: publishedAddress(config.hubbleListenAddress, node.record.nodeIp), tls: { enabled: tls !== undefined }, version: VERSION };
        await store.put(peerStoreKey(config.nodeName), peer);
      }
    } catch (error) {
      stopL7();
      observer.stop();
      unsubscribe();
      await server.close();
      await flowExport.stop();
      throw error;
    }
    log.info({ socket: socketPath, address: config.hubbleListenAddress || undefined, capacity: config.hubbleBufferCapacity }, 'Observer API listening');
    return {
      value: undefined,
      stop: async () => {
        // Withdrawn before closing, so relays learn the API is down from the store, not from a timeout.
        if (peer) await store.delete(peerStoreKey(config.nodeName)).catch((error: unknown) => log.warn({ err: error }, 'removing the Observer API address from the store'));
        stopL7();
        observer.stop();
        unsubscribe();
        await server.close();
        await flowExport.stop();
      },
      status: () => {
        const stats = observer.stats();
        return {
          observer: {
            enabled: true,
            socket: socketPath,
            address: config.hubbleListenAddress || undefined,
            flows: stats.numFlows,
            maxFlows: stats.maxFlows,
            seenFlows: stats.seenFlows,
            overwritten: stats.overwritten,
            decodeErrors: stats.decodeErrors,
            lost: { kernelRing: String(stats.lost.kernel), decodeQueue: String(stats.lost.queue), flowBuffer: String(stats.lost.buffer) },
          },
          flowExport: flowExport.status(),
        };
      },
      health: () => {
        const stats = observer.stats();
        const lost = stats.lost.kernel + stats.lost.queue + stats.lost.buffer;
        return { degraded: false, lostEvents: String(lost) };
      },
    };
  },
});
