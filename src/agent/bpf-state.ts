/**
 * Reads the node's pinned datapath maps for `ciliate bpf … list`: what the kernel actually holds,
 * which is what to look at when the agent's view and the packets disagree.
 * @module
 */
import { join } from 'node:path';
import { BpfMap, type Codec } from '../ebpf/index.ts';
import { ctEntry, ctTuple, endpointInfo, endpointKey, ipcacheKey, MapName, readDatapathMetrics, remoteEndpointInfo } from '../datapath/index.ts';
import { RequestError } from './api-errors.ts';

function dump<K, V>(bpfRoot: string, name: string, key: Codec<K>, value: Codec<V>): { key: K; value: V }[] {
  using map = BpfMap.openPinned(join(bpfRoot, 'maps', name), key, value);
  return [...map.entries()].map(([k, v]) => ({ key: k, value: v }));
}

const READERS = {
  endpoint: (bpfRoot: string) => dump(bpfRoot, MapName.LXC, endpointKey, endpointInfo),
  ipcache: (bpfRoot: string) => dump(bpfRoot, MapName.IPCACHE, ipcacheKey, remoteEndpointInfo),
  ct: (bpfRoot: string) => dump(bpfRoot, MapName.CT4, ctTuple, ctEntry),
  metrics: (bpfRoot: string) => readDatapathMetrics(bpfRoot).map(({ reason, reasonName, direction, ...value }) => ({ key: { reason, reasonName, direction }, value })),
} as const;

export type BpfStateMap = keyof typeof READERS;

export function readBpfState(bpfRoot: string, name: string): { key: unknown; value: unknown }[] {
  // An own property only: `constructor` or `__proto__` from a URL must not reach Object's members.
  const reader = Object.hasOwn(READERS, name) ? READERS[name as BpfStateMap] : undefined;
  if (!reader) throw new RequestError('ERR_NOT_FOUND', `no datapath map ${name}: try ${Object.keys(READERS).join(', ')}`);
  return reader(bpfRoot);
}
