/**
 * What the agent and its proxy process tell each other over the IPC channel (plain JSON).
 * @module
 */
import type { L7HttpRecord } from '../observer/index.ts';
import type { PolicyMapEntry } from '../policy/index.ts';

/**
 * Everything the proxy judges with, sent whole on every change: the local endpoints' identities
 * (the datapath redirects only connections from local pods, whose source addresses it has
 * checked) and, per endpoint with L7 rules, its ingress policy entries that carry them.
 */
export interface ProxyState {
  /** The agent's policy revision this state reflects. */
  revision: number;
  /** [address, identity] of every local endpoint. */
  identities: [string, number][];
  /** Per local endpoint with ingress L7 rules: its ingress entries that carry them (by its address). */
  policies: { address: string; entries: PolicyMapEntry[] }[];
  /** Per local endpoint with egress L7 rules: its egress entries that carry them (by its address). */
  egress?: { address: string; entries: PolicyMapEntry[] }[];
  /**
   * [CIDR, identity] of the ipcache's prefixes that are not a pod's (CIDR identities of toCIDR and
   * toFQDNs): how an egress rule's destination outside the cluster is named. Else world.
   */
  prefixes?: [string, number][];
}

export type ToProxy = { type: 'state'; state: ProxyState };

export type FromProxy =
  | { type: 'ready'; port: number }
  | { type: 'records'; records: L7HttpRecord[]; lost: number }
  | { type: 'fatal'; message: string };
