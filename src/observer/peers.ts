/**
 * Where each agent's Observer API can be reached, as the agents publish it in the shared store
 * (`hubble-peers/<node>`) and the relay reads it: Ciliate's stand-in for Hubble's peer service.
 * @module
 */
import { parseListenAddress, type ListenAddress } from '../metrics/index.ts';
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

const WILDCARD_HOSTS = new Set(['0.0.0.0', '::']);

function parse(listenAddress: string): ListenAddress {
  let parsed: ListenAddress | undefined;
  try {
    parsed = parseListenAddress(listenAddress);
  } catch (error) {
    throw new ObserverError('ERR_OBSERVER_LISTEN', `listen address ${JSON.stringify(listenAddress)}: ${(error as Error).message}`, { cause: error });
  }
  if (!parsed) throw new ObserverError('ERR_OBSERVER_LISTEN', 'listen address is empty: want host:port or :port');
  return parsed;
}

/** What to bind for a listen address: gRPC wants a host, so `:port` becomes every IPv4 address. */
export function bindAddress(listenAddress: string): string {
  const { host, port } = parse(listenAddress);
  return host === undefined ? `0.0.0.0:${port}` : listenAddress;
}

/**
 * The address to publish for a listen address: a wildcard listener is reached at the node's
 * underlay address, which is what a relay on another node can route to; any other host is taken
 * as the operator's choice (a loopback one then reaches only relays on the same node).
 */
export function publishedAddress(listenAddress: string, nodeIp: string): string {
  const { host, port } = parse(listenAddress);
  if (host === undefined || WILDCARD_HOSTS.has(host)) return `${nodeIp}:${port}`;
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}
