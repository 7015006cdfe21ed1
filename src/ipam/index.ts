/**
 * Cluster-pool IPAM as Cilium does it: a cluster CIDR split into per-node pod CIDRs
 * (`ClusterPool`), and per-node allocation of pod addresses from the node's CIDR (`NodeIpam`).
 * All state lives in a `StateStore` under `ipam/` (see keys.ts), written with compare-and-swap
 * transactions, so it survives restarts and stays consistent when several nodes share one store.
 *
 * @example
 * const store = await LocalStateStore.open('/var/lib/ciliate/state');
 * const ipam = await NodeIpam.open({ store, nodeName: 'n1', pool: { clusterCidr: '10.244.0.0/16', nodeMaskSize: 24 } });
 * const { ip } = await ipam.allocate('4f1c2a:eth0');
 * console.log(ipam.snapshot()); // { node: 'n1', cidr: '10.244.0.0/24', routerIp: '10.244.0.1', capacity: 253, used: 1, … }
 * @module
 */
export * from './errors.ts';
export * from './cidr.ts';
export { ClusterPool, parseClusterPoolConfig, MAX_NODE_MASK_SIZE, type ClusterPoolConfig, type ClusterPoolSnapshot, type NodeCidrAllocation } from './cluster-pool.ts';
export { NodeIpam, addressAllocator, type NodeIpamOptions, type Allocation, type NodeIpamSnapshot, type AddressAllocatorView } from './node-ipam.ts';
export { IPAM_PREFIX, type NodeRecord, type CidrClaim, type IpRecord, type OwnerRecord } from './keys.ts';
