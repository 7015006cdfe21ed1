/**
 * The cluster view: other nodes and their endpoints from the shared store, into routes and the
 * ipcache.
 * @module
 */
import { z } from 'zod';
import { ClusterWatcher } from '../cluster.ts';
import { NodeError } from '../errors.ts';
import { defineModule } from '../module.ts';
import { NodeHealth } from '../node-health.ts';
import { ClusterCell, EndpointsCell, IpcacheCell, NodeCell, NodeHealthCell, NodeRoutingCell, StoreCell, type NodeHealthView } from './cells.ts';

export const clusterModule = defineModule({
  name: 'cluster',
  description: 'other nodes and their endpoints, followed in the shared store',
  // After the local endpoints, as the agent always started it: remote entries never shadow a
  // local endpoint being restored.
  needs: { store: StoreCell, node: NodeCell, ipcache: IpcacheCell, routing: NodeRoutingCell, endpoints: EndpointsCell },
  provides: ClusterCell,
  async start({ store, node, ipcache, routing }, { config, log }) {
    const cluster = new ClusterWatcher({ store, self: config.nodeName, tunnel: node.record.routingMode === 'tunnel', ipcache, routing, log });
    await cluster.start();
    return { value: cluster, stop: () => cluster.stop() };
  },
});

export const nodeHealthConfig = {
  enableHealthChecking: z.boolean().default(true).describe("answer other nodes' health probes and probe them (Cilium's enable-health-checking); cilium_unreachable_nodes counts the nodes that do not answer"),
  clusterHealthPort: z.number().int().min(1).max(65535).default(4240).describe("TCP port on the node address where agents answer each other's health probes (Cilium's cluster-health-port)"),
  healthProbeInterval: z.number().int().min(100).max(3_600_000).default(5000).describe('milliseconds between probes of every other node (a probe waits at most this long, 3 s at most)'),
};

const NO_NODE_HEALTH: NodeHealthView = { unreachable: () => undefined, reachability: () => [] };

export const nodeHealthModule = defineModule({
  name: 'node-health',
  description: "other nodes' reachability: answers their probes on the node address and probes every node the cluster view knows",
  config: nodeHealthConfig,
  needs: { node: NodeCell, cluster: ClusterCell },
  provides: NodeHealthCell,
  async start({ node, cluster }, { config, log }) {
    if (!config.enableHealthChecking) return { value: NO_NODE_HEALTH, status: () => ({ clusterHealth: { enabled: false } }) };
    const health = new NodeHealth({
      self: config.nodeName,
      address: node.record.nodeIp,
      port: config.clusterHealthPort,
      intervalMs: config.healthProbeInterval,
      nodes: () => cluster.nodes.all(),
      log,
    });
    await health.start().catch((error: unknown) => {
      throw new NodeError('ERR_NODE_HEALTH_LISTEN', `answering health probes on ${node.record.nodeIp}:${config.clusterHealthPort} (clusterHealthPort): ${(error as Error).message}`, { cause: error });
    });
    return {
      value: health as NodeHealthView,
      stop: () => health.stop(),
      status: () => {
        const nodes = health.reachability();
        return {
          clusterHealth: {
            enabled: true,
            reachable: nodes.filter((n) => n.reachable).length,
            probed: nodes.length,
            unreachable: nodes.filter((n) => !n.reachable).map((n) => `${n.node}: ${n.reason}`),
          },
        };
      },
    };
  },
});
