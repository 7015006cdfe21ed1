/**
 * `DELETE /v1/nodes/:name`: deregisters a node that is gone for good, as Cilium's operator cleans
 * up after a deleted Kubernetes node. Everything the node owns in the store goes in ONE
 * transaction — its node record, policy status and wait request, its endpoint records, its pod
 * CIDR with its address and owner records, and its identity references — so a failure leaves
 * the store exactly as it was. A node with more keys than etcd takes in one transaction goes in
 * several, its node record last: a failure then leaves it registered, and deleting it again
 * finishes. Identities themselves stay: the normal garbage collection takes
 * those no other node references.
 *
 * Every delete carries the revision it was read at, so a write racing with the deregistration to
 * one of the node's keys fails the transaction, which is then rebuilt from a fresh read. A key
 * created meanwhile (a new endpoint, address or reference) is not compared — the store compares
 * keys, not prefixes — and survives; only a running agent creates them, and deleting the node
 * again removes them.
 *
 * There is no liveness signal to check (node records carry no heartbeat or lease), so a live
 * node can be deleted. Its agent does not notice while running — but its CIDR and its identities'
 * references are then free for others to take — and registers again, with a CIDR it may have to
 * claim anew, only when it restarts. Deregister a node once its agent is stopped for good.
 * @module
 */
import { contains, IpamError, parseCidr, tryParseIpv4 } from '../ipam/index.ts';
import { cidrKey, IPS_PREFIX, nodeKey as ipamNodeKey, ownersPrefix, validateNodeName, type CidrClaim, type IpRecord, type NodeRecord as IpamNodeRecord } from '../ipam/keys.ts';
import { byIdKey, parseRefKey, REFS_PREFIX, type IdentityRecord } from '../identity/keys.ts';
import { StoreError, type StateStore, type TxnOp } from '../store/index.ts';
import { NodeError } from './errors.ts';
import { nodeEndpointsPrefix } from './endpoint.ts';
import { nodeStoreKey } from './node.ts';
import { POLICY_STATUS_PREFIX, POLICY_WAIT_PREFIX } from './policy-status.ts';
import { peerStoreKey, HUBBLE_PEERS_PREFIX } from '../observer/peers.ts';


/** Rebuilds after a conflict; each lost round means someone else wrote one of the node's keys. */
const MAX_ATTEMPTS = 8;
/** Operations per transaction when one will not do: below etcd's default --max-txn-ops of 128. */
const CHUNK_OPS = 100;

export interface NodeDeregistration {
  node: string;
  /** The store revision the deletion committed at. */
  revision: number;
  /** Every key deleted, sorted. */
  deleted: string[];
  /** The pod CIDR returned to the pool, if the node held one. */
  podCidr: string | undefined;
  /** Identities whose references were dropped (garbage collection decides whether they go). */
  identities: number[];
}

/**
 * Deletes everything `node` owns in the store, in one transaction (several, node record last, when
 * the store takes no transaction that large). Throws NodeError: ERR_BAD_REQUEST for a malformed
 * name, ERR_NODE_IS_SELF for the node the answering agent runs as (`self`), ERR_NODE_CONFLICT when
 * the node's keys keep changing, ERR_NODE_NOT_FOUND when the store holds nothing of the node.
 */
export async function deregisterNode(store: StateStore, node: string, self: string, now: () => number = Date.now): Promise<NodeDeregistration> {
  try {
    validateNodeName(node);
  } catch (error) {
    if (error instanceof IpamError) throw new NodeError('ERR_BAD_REQUEST', `node delete: node name ${JSON.stringify(node)} is invalid: expected a DNS subdomain (lowercase letters, digits, '-' and '.')`, { cause: error });
    throw error;
  }
  if (node === self) {
    throw new NodeError('ERR_NODE_IS_SELF', `node delete: refusing to delete node ${node}: this agent runs as ${node}; ask another node's agent, once this one is stopped for good`);
  }
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const plan = await planDeregistration(store, node, now());
    if (plan.ops.length === 0) {
      throw new NodeError('ERR_NODE_NOT_FOUND', `node delete: no node ${node}: the store holds nothing of it (ciliate node list shows the registered nodes)`);
    }
    try {
      const { revision } = await store.transaction(plan.ops);
      const deleted = plan.ops.filter((op) => op.type === 'delete').map((op) => op.key).sort();
      return { node, revision, deleted, podCidr: plan.podCidr, identities: plan.identities };
    } catch (error) {
      if (StoreError.is(error, 'ERR_STORE_CONFLICT')) continue;
      // etcd caps the operations of one transaction (--max-txn-ops, 128 by default).
      if (StoreError.is(error, 'ERR_STORE_INVALID_ARGUMENT') && plan.ops.length > CHUNK_OPS) return deregisterInChunks(store, node, now);
      throw error;
    }
  }
  throw new NodeError('ERR_NODE_CONFLICT', `node delete: ${node}: its keys changed during ${MAX_ATTEMPTS} attempts (is its agent running?); nothing was deleted`);
}

interface Plan {
  ops: TxnOp[];
  /** The same operations in the groups that must commit together (a ref's delete with its identity's rewrite). */
  groups: TxnOp[][];
  podCidr: string | undefined;
  identities: number[];
}

/** The transaction that removes `node`, from one read of each prefix; every delete is compare-and-swap. */
async function planDeregistration(store: StateStore, node: string, now: number): Promise<Plan> {
  const [record, status, wait, peer, endpoints, ipamNode, ips, owners, refs] = await Promise.all([
    store.get(nodeStoreKey(node)),
    store.get(`${POLICY_STATUS_PREFIX}${node}`),
    store.get(`${POLICY_WAIT_PREFIX}${node}`),
    store.get(peerStoreKey(node)),
    store.list(nodeEndpointsPrefix(node)),
    store.get<IpamNodeRecord>(ipamNodeKey(node)),
    store.list<IpRecord>(IPS_PREFIX),
    store.list(ownersPrefix(node)),
    store.list(REFS_PREFIX),
  ]);
  const groups: TxnOp[][] = [];
  const deleteOp = (entry: { key: string; modRevision: number }): TxnOp => ({ type: 'delete', key: entry.key, expectedRevision: entry.modRevision });
  const drop = (entry: { key: string; modRevision: number } | undefined): void => {
    if (entry) groups.push([deleteOp(entry)]);
  };
  drop(record);
  drop(status);
  drop(wait);
  drop(peer);
  endpoints.entries.forEach(drop);

  drop(ipamNode);
  const podCidr = ipamNode?.value.cidr;
  let pool: ReturnType<typeof parseCidr> | undefined;
  let freed: string | undefined;
  if (podCidr !== undefined) {
    const claim = await store.get<CidrClaim>(cidrKey(podCidr));
    // Only the node's own claim: a hand-edited store must not free someone else's CIDR.
    if (claim?.value.node === node) {
      drop(claim);
      freed = podCidr;
      try {
        pool = parseCidr(podCidr);
      } catch {
        pool = undefined; // a malformed CIDR holds no addresses to free
      }
    }
  }
  for (const entry of ips.entries) {
    // Addresses inside a CIDR being freed go too, whatever their node field says: the node
    // IPAM that gets the CIDR next would count them as taken.
    const address = tryParseIpv4(entry.key.slice(IPS_PREFIX.length));
    if (entry.value.node === node || (pool !== undefined && address !== undefined && contains(pool, address))) drop(entry);
  }
  owners.entries.forEach(drop);

  const identities: number[] = [];
  for (const entry of refs.entries) {
    const ref = parseRefKey(entry.key);
    if (ref?.node !== node) continue;
    identities.push(ref.id);
    // Dropping a ref rewrites the identity (keys.ts): the garbage-collection grace period starts
    // now, and a collector that listed before this transaction cannot delete from a stale view.
    const identity = await store.get<IdentityRecord>(byIdKey(ref.id));
    const group = [deleteOp(entry)];
    if (identity) group.push({ type: 'put', key: identity.key, value: { ...identity.value, lastUsedAt: now } satisfies IdentityRecord, expectedRevision: identity.modRevision });
    groups.push(group);
  }
  return { ops: groups.flat(), groups, podCidr: freed, identities };
}

/**
 * The deregistration as several transactions, for a node with more keys than one may hold. The
 * node record goes last, so that until the end the node is still listed and deleting it again
 * finishes the job; its addresses go before its CIDR, so that no node claims the CIDR while they
 * still count as taken. Each transaction is compare-and-swap like the single one; a conflict
 * rereads what is left and goes on.
 */
async function deregisterInChunks(store: StateStore, node: string, now: () => number): Promise<NodeDeregistration> {
  const deleted: string[] = [];
  const identities = new Set<number>();
  let podCidr: string | undefined;
  let revision = 0;
  const stage = (group: TxnOp[]): number => {
    const key = group[0].key;
    if (key === nodeStoreKey(node)) return 3;
    if (key === ipamNodeKey(node) || key.startsWith('ipam/cidrs/')) return 2;
    if (key.startsWith(POLICY_STATUS_PREFIX) || key.startsWith(POLICY_WAIT_PREFIX) || key.startsWith(HUBBLE_PEERS_PREFIX)) return 1;
    return 0;
  };
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const plan = await planDeregistration(store, node, now());
    podCidr ??= plan.podCidr;
    for (const id of plan.identities) identities.add(id);
    if (plan.groups.length === 0) break;
    const ordered = [...plan.groups].sort((a, b) => stage(a) - stage(b));
    try {
      let chunk: TxnOp[] = [];
      const commit = async (): Promise<void> => {
        if (chunk.length === 0) return;
        ({ revision } = await store.transaction(chunk));
        deleted.push(...chunk.filter((op) => op.type === 'delete').map((op) => op.key));
        chunk = [];
      };
      for (const [i, group] of ordered.entries()) {
        // A stage starts a transaction of its own, so no later stage commits with an earlier one.
        if (chunk.length + group.length > CHUNK_OPS || (i > 0 && stage(group) !== stage(ordered[i - 1]))) await commit();
        chunk.push(...group);
      }
      await commit();
      return { node, revision, deleted: deleted.sort(), podCidr, identities: [...identities] };
    } catch (error) {
      if (!StoreError.is(error, 'ERR_STORE_CONFLICT')) throw error;
    }
  }
  throw new NodeError('ERR_NODE_CONFLICT', `node delete: ${node}: its keys changed during ${MAX_ATTEMPTS} attempts (is its agent running?); ${deleted.length} of its keys were deleted, deleting it again goes on`);
}
