/**
 * `DELETE /v1/nodes/:name`: deregisters a node that is gone for good, as Cilium's operator cleans
 * up after a deleted Kubernetes node. Everything the node owns in the store goes in ONE
 * transaction — its node record, policy status and wait request, its endpoint records, its pod
 * CIDR with its address and owner records, and its identity references — so a failure leaves
 * the store exactly as it was. Identities themselves stay: the normal garbage collection takes
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
import { ApiError } from './api-server.ts';
import { POLICY_STATUS_PREFIX, POLICY_WAIT_PREFIX } from './policy-status.ts';

/** Where the endpoint manager keeps a node's endpoints: `endpoints/<node>/<container>/<ifname>`. */
const ENDPOINTS_PREFIX = 'endpoints/';

/** Rebuilds after a conflict; each lost round means someone else wrote one of the node's keys. */
const MAX_ATTEMPTS = 8;

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
 * Deletes everything `node` owns in the store, in one transaction. Throws ApiError: 400 for a
 * malformed name, 409 for the node the answering agent runs as (`self`) or when the node's keys
 * keep changing, 404 when the store holds nothing of the node.
 */
export async function deregisterNode(store: StateStore, node: string, self: string, now: () => number = Date.now): Promise<NodeDeregistration> {
  try {
    validateNodeName(node);
  } catch (error) {
    if (error instanceof IpamError) throw new ApiError(400, 'ERR_BAD_REQUEST', `node delete: node name ${JSON.stringify(node)} is invalid: expected a DNS subdomain (lowercase letters, digits, '-' and '.')`);
    throw error;
  }
  if (node === self) {
    throw new ApiError(409, 'ERR_NODE_IS_SELF', `node delete: refusing to delete node ${node}: this agent runs as ${node}; ask another node's agent, once this one is stopped for good`);
  }
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const plan = await planDeregistration(store, node, now());
    if (plan.ops.length === 0) {
      throw new ApiError(404, 'ERR_NODE_NOT_FOUND', `node delete: no node ${node}: the store holds nothing of it (ciliate node list shows the registered nodes)`);
    }
    try {
      const { revision } = await store.transaction(plan.ops);
      const deleted = plan.ops.filter((op) => op.type === 'delete').map((op) => op.key).sort();
      return { node, revision, deleted, podCidr: plan.podCidr, identities: plan.identities };
    } catch (error) {
      if (StoreError.is(error, 'ERR_STORE_CONFLICT')) continue;
      if (StoreError.is(error, 'ERR_STORE_INVALID_ARGUMENT')) {
        // etcd caps the operations of one transaction (--max-txn-ops, 128 by default).
        throw new ApiError(413, 'ERR_NODE_TOO_LARGE', `node delete: ${node}: the store rejected the ${plan.ops.length}-operation transaction, nothing was deleted: ${error.message}`);
      }
      throw error;
    }
  }
  throw new ApiError(409, 'ERR_NODE_CONFLICT', `node delete: ${node}: its keys changed during ${MAX_ATTEMPTS} attempts (is its agent running?); nothing was deleted`);
}

interface Plan {
  ops: TxnOp[];
  podCidr: string | undefined;
  identities: number[];
}

/** The transaction that removes `node`, from one read of each prefix; every delete is compare-and-swap. */
async function planDeregistration(store: StateStore, node: string, now: number): Promise<Plan> {
  const [record, status, wait, endpoints, ipamNode, ips, owners, refs] = await Promise.all([
    store.get(`nodes/${node}`),
    store.get(`${POLICY_STATUS_PREFIX}${node}`),
    store.get(`${POLICY_WAIT_PREFIX}${node}`),
    store.list(`${ENDPOINTS_PREFIX}${node}/`),
    store.get<IpamNodeRecord>(ipamNodeKey(node)),
    store.list<IpRecord>(IPS_PREFIX),
    store.list(ownersPrefix(node)),
    store.list(REFS_PREFIX),
  ]);
  const ops: TxnOp[] = [];
  const drop = (entry: { key: string; modRevision: number } | undefined): void => {
    if (entry) ops.push({ type: 'delete', key: entry.key, expectedRevision: entry.modRevision });
  };
  drop(record);
  drop(status);
  drop(wait);
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
    drop(entry);
    identities.push(ref.id);
    // Dropping a ref rewrites the identity (keys.ts): the garbage-collection grace period starts
    // now, and a collector that listed before this transaction cannot delete from a stale view.
    const identity = await store.get<IdentityRecord>(byIdKey(ref.id));
    if (identity) ops.push({ type: 'put', key: identity.key, value: { ...identity.value, lastUsedAt: now } satisfies IdentityRecord, expectedRevision: identity.modRevision });
  }
  return { ops, podCidr: freed, identities };
}
