/**
 * A node as the cluster knows it: its record under `nodes/<name>` in the shared store, written by
 * its agent when it starts and read by every other node (routes, tunnel endpoints, policy waits).
 * @module
 */
import type { RoutingMode } from '../datapath/index.ts';

export interface NodeRecord {
  name: string;
  /** Underlay address other nodes reach this one at (tunnel endpoint, native-routing next hop). */
  nodeIp: string;
  podCidr: string;
  routerIp: string;
  routingMode: RoutingMode;
  agentVersion: string;
  startedAt: string;
}

export const NODES_PREFIX = 'nodes/';

export function nodeStoreKey(name: string): string {
  return `${NODES_PREFIX}${name}`;
}

/** The node name of a `nodes/<name>` key. */
export function nodeNameOfKey(key: string): string {
  return key.slice(NODES_PREFIX.length);
}
