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
  policies: { address: string; entries: PolicyMapEntry[] }[];
}

export type ToProxy = { type: 'state'; state: ProxyState };

export type FromProxy =
  | { type: 'ready'; port: number }
  | { type: 'records'; records: L7HttpRecord[]; lost: number }
  | { type: 'fatal'; message: string };
