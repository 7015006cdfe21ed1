/**
 * The endpoint model: one pod interface, as the agent records it in its state store and its
 * endpoints table.
 * @module
 */
import { createHash } from 'node:crypto';
import type { DatapathEndpoint } from '../datapath/index.ts';
import type { NamedPort } from '../loadbalancer/index.ts';

/**
 * What the datapath needs (id, addresses, interfaces, identity) plus what the agent and its
 * users need to find the endpoint again.
 */
export interface Endpoint extends DatapathEndpoint {
  containerId: string;
  /** Interface name inside the pod, e.g. eth0. */
  ifname: string;
  /** The pod's network namespace file, e.g. /run/netns/pod1 or /proc/123/ns/net. */
  netns: string;
  labels: Record<string, string>;
  podName?: string;
  namespace?: string;
  /**
   * What runs the pod (Hubble's Endpoint.workloads): given by whoever adds the endpoint, as
   * Ciliate has no owner references to derive it from (Cilium takes it from the pod's controller).
   */
  workload?: EndpointWorkload;
  /** The pod's named ports (its containers' ports that have names): what a service's named targetPort resolves to. */
  ports?: NamedPort[];
  /**
   * The pod's containers, given by whoever runs them (a CRI integration; podman's container is the
   * endpoint's own): what a TracingPolicy's containerSelector selects and process events name.
   * Absent: the containers are unknown, and a containerSelector selects none of them.
   */
  containers?: EndpointContainer[];
  createdAt: string;
}

/**
 * A container of a pod: its runtime id (what its cgroup is named after: `libpod-<id>.scope`,
 * `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`, or `<id>`), its name and
 * its image reference.
 */
export interface EndpointContainer {
  id: string;
  name?: string;
  image?: string;
}

/** What a container id may be: letters, digits, `_`, `.`, `-` (a cgroup directory is named after it). */
export const CONTAINER_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** A pod's controller: `{kind: 'Deployment', name: 'deathstar'}`. */
export interface EndpointWorkload {
  kind: string;
  name: string;
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

/** Endpoints in the shared store: `endpoints/<node>/<container>/<ifname>`, written by their node. */
export const ENDPOINTS_PREFIX = 'endpoints/';

/** Where `node` keeps its endpoints in the store. */
export function nodeEndpointsPrefix(node: string): string {
  return `${ENDPOINTS_PREFIX}${node}/`;
}

/** The node of an `endpoints/<node>/…` key. */
export function nodeOfEndpointKey(key: string): string {
  return key.slice(ENDPOINTS_PREFIX.length).split('/', 1)[0];
}
