/**
 * The cluster view: other nodes and their endpoints from the shared store, into routes and the
 * ipcache.
 * @module
 */
import { ClusterWatcher } from '../cluster.ts';
import { defineModule } from '../module.ts';
import { ClusterCell, EndpointsCell, IpcacheCell, NodeCell, NodeRoutingCell, StoreCell } from './cells.ts';

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
