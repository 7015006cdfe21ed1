/**
 * The node's side of the datapath: host networking (forwarding, the host device that holds the
 * pods' gateway), masquerading, the endpoint datapath and its shared maps, routing to other
 * nodes, and the ipcache with every address of the node as the host identity.
 * @module
 */
import { z } from 'zod';
import {
  ATTACH_MODES,
  dropsByReason,
  EndpointDatapath,
  HOST_DEVICE,
  Masquerade,
  NodeRouting,
  readDatapathMetrics,
  ReservedIdentity,
  setUpNodeNetworking,
} from '../../datapath/index.ts';
import type { AttachMode as AttachModeName } from '../../datapath/index.ts';
import { readBpfState } from '../bpf-state.ts';
import { Ipcache } from '../ipcache.ts';
import { defineModule } from '../module.ts';
import { EndpointDatapathCell, HostNetworkingCell, IpcacheCell, NodeCell, NodeRoutingCell } from './cells.ts';
import { NodeAddresses } from '../node-addresses.ts';


export const hostNetworkingModule = defineModule({
  name: 'host-networking',
  description: 'IPv4 forwarding and the host device holding the pods\' gateway address',
  needs: { node: NodeCell },
  provides: HostNetworkingCell,
  async start({ node }) {
    await setUpNodeNetworking({ routerIp: node.record.routerIp });
    return { value: { device: HOST_DEVICE } };
  },
});

export const masqueradeConfig = {
  masquerade: z.boolean().default(true).describe('masquerade pod traffic leaving the cluster CIDR behind the node\'s address'),
};

export const masqueradeModule = defineModule({
  name: 'masquerade',
  description: 'pod traffic leaving the cluster CIDR masqueraded behind the node\'s address',
  config: masqueradeConfig,
  needs: { node: NodeCell },
  async start({ node }, { config, log }) {
    if (!config.masquerade) {
      log.info('masquerading is off');
      return { value: undefined };
    }
    const masquerade = new Masquerade({ clusterCidr: node.clusterCidr, log, refreshIntervalMs: config.reconcileRefreshInterval * 1000 });
    await masquerade.start();
    return { value: undefined, stop: () => masquerade.stop(), reconcilers: () => [masquerade.health()] };
  },
});

export const endpointDatapathConfig = {
  datapathAttach: z
    .enum(ATTACH_MODES as [AttachModeName, ...AttachModeName[]])
    .default('tc-block')
    .describe(
      'how bpf_lxc is attached to pod interfaces: tc-block (a clsact qdisc bound to the node\'s shared tc filter blocks: one request per pod, no RCU grace period) or tcx (two pinned TCX links per pod, each waiting out a grace period)',
    ),
};

export const endpointDatapathModule = defineModule({
  name: 'endpoint-datapath',
  description: 'the endpoint programs and the node\'s shared maps, pinned under --bpf-root',
  config: endpointDatapathConfig,
  needs: {},
  provides: EndpointDatapathCell,
  start(_, { config, log, api }) {
    const datapath = new EndpointDatapath(config.bpfRoot, log, { attach: config.datapathAttach });
    api.route('GET', '/v1/bpf/:map', ({ params }) => readBpfState(config.bpfRoot, params.map));
    return {
      value: datapath,
      stop: () => datapath.close(),
      // Drops by reason at a glance: a spoofing pod or a policy denial shows here first.
      status: () => ({ drops: dropsByReason(readDatapathMetrics(config.bpfRoot)) }),
    };
  },
});

export const nodeRoutingModule = defineModule({
  name: 'node-routing',
  description: 'pod traffic between nodes: VXLAN tunnel or native routes',
  needs: { node: NodeCell, host: HostNetworkingCell, datapath: EndpointDatapathCell },
  provides: NodeRoutingCell,
  async start({ node }, { config, log }) {
    // The ipcache stays with the agent's own table and reconciler (manageIpcache: false).
    const routing = new NodeRouting({ bpfRoot: config.bpfRoot, log, manageIpcache: false, refreshIntervalMs: config.reconcileRefreshInterval * 1000 });
    try {
      await routing.setUp({
        name: node.record.name,
        nodeIp: node.record.nodeIp,
        podCidr: node.record.podCidr,
        routerIp: node.record.routerIp,
        routingMode: node.record.routingMode,
        nativeRoutingCidr: node.clusterCidr,
      });
    } catch (error) {
      await routing.close();
      throw error;
    }
    return { value: routing, stop: () => routing.close(), reconcilers: () => routing.health() };
  },
});

export const ipcacheModule = defineModule({
  name: 'ipcache',
  description: 'prefix → identity (and tunnel endpoint) for the datapath, every node address as the host',
  needs: { node: NodeCell, datapath: EndpointDatapathCell },
  provides: IpcacheCell,
  async start({ node, datapath }, { config, log }) {
    const ipcache = new Ipcache(datapath.ipcache, log, { refreshIntervalMs: config.reconcileRefreshInterval * 1000 });
    const routerIp = node.record.routerIp;
    // Whatever address the node sends from — the pods' gateway (Cilium's cilium_host address),
    // the underlay, an uplink added later — is the host, so that fromEntities: host and
    // toEntities: host mean the node and not some CIDR or the world.
    const host = (address: string) => ({ prefix: `${address}/32`, identity: ReservedIdentity.HOST, source: 'local-node' as const });
    ipcache.upsert(host(routerIp));
    const addresses = new NodeAddresses(
      {
        added: (address) => ipcache.upsert(host(address)),
        removed: (address) => {
          if (address !== routerIp && ipcache.table.get(`${address}/32`)?.source === 'local-node') ipcache.delete(`${address}/32`);
        },
      },
      log.child({ part: 'node-addresses' }),
    );
    await addresses.start();
    ipcache.start();
    return {
      value: ipcache,
      stop: () => {
        addresses.stop();
        return ipcache.stop();
      },
      reconcilers: () => [ipcache.health()],
    };
  },
});
