/**
 * The policy part of the agent's API: import, list, delete, revisions, wait, and trace.
 * @module
 */
import { z } from 'zod';
import { PolicyError, type TracePeer } from '../policy/index.ts';
import { parseRequest, RequestError } from './api-errors.ts';
import type { ApiRouter } from './api-server.ts';
import { EndpointError } from './errors.ts';
import type { EndpointManager } from './endpoint-manager.ts';
import { labelMap, type PolicyManager } from './policy-manager.ts';
import { describeLagging, type PolicyStatus } from './policy-status.ts';
import { podLabels } from '../identity/index.ts';
import { Prefix } from '../net/index.ts';

const ImportBody = z.object({ yaml: z.string().min(1), file: z.string().default('<api>') }).strict();
const TraceBody = z
  .object({
    src: z.string().min(1),
    dst: z.string().min(1),
    dport: z.number().int().min(0).max(65535),
    protocol: z.enum(['TCP', 'UDP', 'SCTP', 'ICMP']).default('TCP'),
  })
  .strict();
const NON_NEGATIVE_INTEGER = 'must be a non-negative integer';
const NON_NEGATIVE_NUMBER = 'must be a non-negative number';
const WaitQuery = z.object({
  revision: z.coerce.number({ error: NON_NEGATIVE_INTEGER }).int(NON_NEGATIVE_INTEGER).min(0, NON_NEGATIVE_INTEGER),
  timeoutMs: z.coerce.number({ error: NON_NEGATIVE_NUMBER }).min(0, NON_NEGATIVE_NUMBER).default(30_000),
  scope: z.enum(['cluster', 'node'], { error: 'must be cluster or node' }).default('cluster'),
});


/**
 * Who a trace side is: an endpoint id, a pod (`name` or `namespace/name`), a pod IP, any other
 * IP or CIDR (the world, as its CIDR identity sees it), or labels `k=v,k2=v2`.
 */
export function resolveTracePeer(spec: string, endpoints: EndpointManager): TracePeer {
  const trimmed = spec.trim();
  if (/^\d+$/.test(trimmed)) {
    const endpoint = endpoints.get(trimmed);
    if (!endpoint) throw new EndpointError('ERR_ENDPOINT_NOT_FOUND', `trace: no endpoint ${trimmed}`);
    return { endpoint: endpoint.id };
  }
  // An address or CIDR; anything else names labels or a pod.
  const prefix = Prefix.tryParse(trimmed, { bareAddress: true, hostBits: 'mask' });
  if (prefix !== undefined) {
    const address = prefix.isSingleAddress() ? prefix.addr.toString() : undefined;
    const local = address === undefined ? undefined : endpoints.list().find((ep) => ep.ipv4 === address);
    return local ? { endpoint: local.id } : { cidr: prefix.toString() };
  }
  if (trimmed.includes('=')) {
    const labels: Record<string, string> = {};
    for (const pair of trimmed.split(',')) {
      const eq = pair.indexOf('=');
      if (eq <= 0) throw new RequestError('ERR_BAD_REQUEST', `trace: "${pair}" is not a label key=value`);
      labels[pair.slice(0, eq).replace(/^k8s:/, '')] = pair.slice(eq + 1);
    }
    const namespace = labels['io.kubernetes.pod.namespace'] ?? 'default';
    delete labels['io.kubernetes.pod.namespace'];
    return { labels: labelMap(podLabels({ namespace, labels })) };
  }
  const [namespace, name] = trimmed.includes('/') ? trimmed.split('/', 2) : [undefined, trimmed];
  const pod = endpoints.list().find((ep) => ep.podName === name && (namespace === undefined || (ep.namespace ?? 'default') === namespace));
  if (!pod) throw new EndpointError('ERR_ENDPOINT_NOT_FOUND', `trace: no pod, endpoint, address or labels "${spec}" (labels look like app=web,org=empire)`);
  return { endpoint: pod.id };
}

export function registerPolicyRoutes(api: ApiRouter, policy: PolicyManager, endpoints: EndpointManager, status: PolicyStatus): void {
  api.route('POST', '/v1/policies', async ({ body }) => {
    const { yaml, file } = parseRequest(ImportBody, body, 'policy import');
    // A PolicyValidationError carries its issues to the client as the answer's details.
    return policy.import(yaml, file);
  });
  api.route('GET', '/v1/policies', () => policy.list());
  api.route('DELETE', '/v1/policies', async ({ query }) => {
    const key = query.get('key');
    if (!key) throw new RequestError('ERR_BAD_REQUEST', 'policy delete: query parameter key is required (kind/namespace/name)');
    const result = await policy.delete(key);
    if (result.deleted.length === 0) throw new PolicyError('ERR_POLICY_NOT_FOUND', `no policy ${key}`);
    return result;
  });
  api.route('GET', '/v1/policy/revision', () => ({
    revision: policy.revision,
    endpoints: Object.fromEntries(policy.enforcedRevisions()),
  }));
  // The revision is a store revision, so one an import on another node returned works here too.
  // scope=cluster (the default) answers once every node registered in the store enforces it,
  // scope=node once this node has applied the store's policy and identity changes up to it.
  api.route('GET', '/v1/policy/wait', async ({ query, signal }) => {
    const { revision, timeoutMs, scope } = parseRequest(WaitQuery, Object.fromEntries(query), 'policy wait');
    if (scope === 'cluster') {
      const result = await status.waitForCluster(revision, timeoutMs, signal);
      if (!result.enforced) {
        throw new PolicyError('ERR_TIMEOUT', `policy revision ${revision} not enforced by every node within ${timeoutMs} ms; lagging: ${describeLagging(result.nodes, revision)}`, {
          details: { nodes: result.nodes },
        });
      }
      return { revision: policy.revision, enforced: true, scope, nodes: result.nodes };
    }
    if (!(await policy.waitFor(revision, timeoutMs, signal))) {
      const lagging = policy.lagging(revision);
      const { policies, identities } = policy.progress();
      throw new PolicyError(
        'ERR_TIMEOUT',
        `policy revision ${revision} not enforced within ${timeoutMs} ms (this node has applied policies up to revision ${policies} and identities up to ${identities}${lagging.length > 0 ? `; the maps of endpoints ${lagging.join(', ')} failed to update` : ''})`,
      );
    }
    return { revision: policy.revision, enforced: true, scope };
  });
  api.route('POST', '/v1/policy/trace', ({ body }) => {
    const { src, dst, dport, protocol } = parseRequest(TraceBody, body, 'policy trace');
    return policy.trace({ src: resolveTracePeer(src, endpoints), dst: resolveTracePeer(dst, endpoints), dport, protocol });
  });
}
