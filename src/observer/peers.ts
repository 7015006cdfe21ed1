/**
 * Where each agent's Observer API can be reached, as the agents publish it in the shared store
 * (`hubble-peers/<node>`) and the relay reads it: Ciliate's stand-in for Hubble's peer service.
 * @module
 */
import { ObserverError } from './errors.ts';

export const HUBBLE_PEERS_PREFIX = 'hubble-peers/';

/** One agent's Observer API, written by its observer module at start and removed at clean stop. */
export interface HubblePeerRecord {
  name: string;
  /** `host:port` other nodes dial: the node's underlay address when the listener takes all addresses. */
  address: string;
  tls: { enabled: boolean; serverName?: string };
  version: string;
}

export function peerStoreKey(nodeName: string): string {
  return `${HUBBLE_PEERS_PREFIX}${nodeName}`;
}

export function peerNameOfKey(key: string): string {
  return key.slice(HUBBLE_PEERS_PREFIX.length);
}

const WILDCARD_HOSTS = new Set(['', '0.0.0.0', '[::]', '::']);

/** Splits `host:port` (`[v6]:port` too); an empty host means every address, as Cilium's `:4244`. */
function splitHostPort(address: string): { host: string; port: string } {
  const colon = address.lastIndexOf(':');
  if (colon < 0 || !/^\d+$/.test(address.slice(colon + 1))) throw new ObserverError('ERR_OBSERVER_LISTEN', `listen address ${JSON.stringify(address)}: want host:port or :port`);
  return { host: address.slice(0, colon), port: address.slice(colon + 1) };
}

/** What to bind for a listen address: gRPC wants a host, so `:port` becomes every IPv4 address. */
export function bindAddress(listenAddress: string): string {
  const { host, port } = splitHostPort(listenAddress);
  return host === '' ? `0.0.0.0:${port}` : listenAddress;
}

/**
 * The address to publish for a listen address: a wildcard listener is reached at the node's
 * underlay address, which is what a relay on another node can route to; any other host is taken
 * as the operator's choice (a loopback one then reaches only relays on the same node).
 */
export function publishedAddress(listenAddress: string, nodeIp: string, boundPort?: number): string {
  const { host, port } = splitHostPort(listenAddress);
  const actualPort = port === '0' && boundPort !== undefined ? String(boundPort) : port;
  return `${WILDCARD_HOSTS.has(host) ? nodeIp : host}:${actualPort}`;
}
