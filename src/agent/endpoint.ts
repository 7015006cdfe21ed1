/**
 * The endpoint model: one pod interface, as the agent records it in its state store and its
 * endpoints table.
 * @module
 */
import { createHash } from 'node:crypto';

export interface Endpoint {
  /** Node-local endpoint id (1–4095), the datapath's ENDPOINT_ID. */
  id: number;
  containerId: string;
  /** Interface name inside the pod, e.g. eth0. */
  ifname: string;
  /** The pod's network namespace file, e.g. /run/netns/pod1 or /proc/123/ns/net. */
  netns: string;
  ipv4: string;
  /** The pod-side MAC. */
  mac: string;
  /** Host-side veth: name, index and MAC. */
  hostIfname: string;
  hostIfindex: number;
  hostMac: string;
  /** Security identity (issue 4 derives it from labels; reserved numbers below 256). */
  identity: number;
  labels: Record<string, string>;
  podName?: string;
  namespace?: string;
  createdAt: string;
}

/** The key of an endpoint in tables and the store: container id and interface. */
export function containerInterfaceKey(containerId: string, ifname: string): string {
  return `${containerId}/${ifname}`;
}

/** Host-side veth name: stable per container interface, within the 15-character limit. */
export function hostInterfaceName(containerId: string, ifname: string): string {
  return `lxc${createHash('sha256').update(containerInterfaceKey(containerId, ifname)).digest('hex').slice(0, 11)}`;
}

export const MAX_ENDPOINT_ID = 4095;
