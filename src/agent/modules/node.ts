/**
 * The node module: this node's pod CIDR and addresses (cluster-pool IPAM) and its record in the
 * shared store, which every other node reads; the nodes API.
 * @module
 */
import { z } from 'zod';
import { detectNodeIp } from '../../datapath/index.ts';
import { NodeIpam } from '../../ipam/index.ts';
import { ConfigError, ipv4OrEmpty } from '../config.ts';
import { defineModule } from '../module.ts';
import { NodeCell, StoreCell } from './cells.ts';
import { NODES_PREFIX, nodeStoreKey, type NodeRecord } from '../node.ts';
import { deregisterNode } from '../node-deregister.ts';
import { VERSION } from '../version.ts';


export const nodeConfig = {
  nodeCidrMaskSize: z.number().int().min(8).max(30).default(24).describe("prefix length of each node's pod CIDR"),
  routingMode: z.enum(['tunnel', 'native']).default('tunnel').describe('tunnel (VXLAN between nodes) or native (pod CIDRs routed on the underlay)'),
  nodeIp: ipv4OrEmpty.default('').describe("this node's underlay address (what other nodes reach it at); empty: its first global address"),
};

export const nodeModule = defineModule({
  name: 'node',
  description: "this node's pod CIDR (cluster-pool IPAM) and its record in the cluster",
  config: nodeConfig,
  needs: { store: StoreCell },
  provides: NodeCell,
  async start({ store }, { config, log, api }) {
    const startedAt = new Date().toISOString();
    const ipam = await NodeIpam.open({
      store,
      nodeName: config.nodeName,
      pool: { clusterCidr: config.clusterCidr, nodeMaskSize: config.nodeCidrMaskSize },
    });
    const nodeIp = config.nodeIp || (await detectNodeIp());
    if (!nodeIp) throw new ConfigError(`node ${config.nodeName} has no underlay address: set nodeIp (--node-ip) or give the node a global IPv4 address`);
    const record: NodeRecord = {
      name: config.nodeName,
      nodeIp,
      podCidr: ipam.cidr,
      routerIp: ipam.routerIp,
      routingMode: config.routingMode,
      agentVersion: VERSION,
      startedAt,
    };
    await store.put(nodeStoreKey(config.nodeName), record);
    log.info({ podCidr: record.podCidr, router: record.routerIp }, 'node registered');

    api.route('GET', '/v1/nodes', async () => (await store.list<NodeRecord>(NODES_PREFIX)).entries.map((e) => e.value));
    api.route('DELETE', '/v1/nodes/:name', ({ params }) => deregisterNode(store, params.name, config.nodeName));
    return {
      value: { record, ipam, clusterCidr: config.clusterCidr },
      status: () => {
        const used = ipam.snapshot();
        return {
          node: config.nodeName,
          routingMode: config.routingMode,
          ipam: { podCidr: used.cidr, routerIp: used.routerIp, used: used.used, capacity: used.capacity },
        };
      },
    };
  },
});

