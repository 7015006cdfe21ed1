/**
 * Endpoints: what CNI ADD and DEL become (addresses, interfaces, identities, policy, datapath),
 * namespaces and their labels, and the endpoints API.
 * @module
 */
import { z } from 'zod';
import { addressAllocator } from '../../ipam/index.ts';
import { namedPortsSchema } from '../../loadbalancer/index.ts';
import { parseRequest } from '../api-errors.ts';
import { CONTAINER_ID, type Endpoint } from '../endpoint.ts';
import { EndpointManager } from '../endpoint-manager.ts';
import { defineModule } from '../module.ts';
import { EndpointDatapathCell, EndpointsCell, IdentitiesCell, IpcacheCell, NamespacesCell, NodeCell, NodeRoutingCell, PolicyCell, StoreCell } from './cells.ts';
import { Namespaces } from '../namespaces.ts';


/** An endpoint as the API shows it: the record plus the policy revision its map enforces. */
export type EndpointView = Endpoint & {
  /** Store revision of the policy state the endpoint's map holds (see `policy wait`). */
  policyRevision?: number;
};

/** A pod's containers (see EndpointContainer): ids as runtimes write them, each once. */
const ContainersBody = z
  .array(
    z
      .object({
        id: z.string().regex(CONTAINER_ID, 'must be a container id (letters, digits, _ . -; what its cgroup is named after)'),
        name: z.string().min(1).max(253).optional(),
        image: z.string().min(1).max(1024).optional(),
      })
      .strict(),
  )
  .max(64)
  .refine((list) => new Set(list.map((c) => c.id)).size === list.length, 'container ids must be unique');
/** PUT /v1/endpoints/:id/containers's body: the containers now, or null (unknown again). */
const ContainersUpdateBody = z.object({ containers: ContainersBody.nullable() }).strict();

/** POST /v1/endpoints's body, which CNI ADD (the cni module) also goes through. */
export const AddEndpointBody = z
  .object({
    containerId: z.string().min(1).max(256),
    ifname: z.string().min(1).max(15).regex(/^[^\s/]+$/, 'must be an interface name'),
    netns: z.string().min(1).startsWith('/', 'must be an absolute path to a network namespace'),
    labels: z.record(z.string(), z.string()).optional(),
    podName: z.string().optional(),
    namespace: z.string().optional(),
    // Kubernetes' rules for a kind and an object name: flows, metrics labels and logs print them.
    workload: z
      .object({
        kind: z.string().regex(/^[A-Z][A-Za-z0-9]{0,62}$/, 'must be a Kubernetes kind (Deployment, StatefulSet, …)'),
        name: z.string().max(253).regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, 'must be a Kubernetes object name (lower case, digits, - and .)'),
      })
      .strict()
      .optional(),
    ports: namedPortsSchema.optional(),
    containers: ContainersBody.optional(),
  })
  .strict();
const LabelsBody = z.record(z.string(), z.string({ error: 'label values must be strings' }), { error: 'body must be an object of string labels' });

export const namespacesModule = defineModule({
  name: 'namespaces',
  description: 'namespaces and their labels, which their pods\' identities carry',
  needs: { store: StoreCell },
  provides: NamespacesCell,
  async start({ store }, { log, api }) {
    const namespaces = new Namespaces({ store, log });
    await namespaces.start();
    api.route('GET', '/v1/namespaces', () => namespaces.list());
    api.route('PUT', '/v1/namespaces/:name/labels', async ({ params, body }) => namespaces.setLabels(params.name, parseRequest(LabelsBody, body, 'namespace labels')));
    return { value: namespaces, stop: () => namespaces.stop() };
  },
});

export const endpointsConfig = {
  endpointLinkPool: z
    .number()
    .int()
    .min(0)
    .max(64)
    .optional()
    .describe(
      'pod links (veth pairs with the endpoint programs attached) kept ready in the node namespace so an add need not wait for the attaches; 0 turns the pool off. Default 4 with --datapath-attach tcx, 0 with tc-block (a pooled pair\'s move into the pod costs more than a tc-block attach)',
    ),
};

export const endpointsModule = defineModule({
  name: 'endpoints',
  description: 'endpoint lifecycle (CNI ADD and DEL) and the endpoints API',
  config: endpointsConfig,
  needs: {
    store: StoreCell,
    node: NodeCell,
    datapath: EndpointDatapathCell,
    routing: NodeRoutingCell,
    ipcache: IpcacheCell,
    identities: IdentitiesCell,
    policy: PolicyCell,
    namespaces: NamespacesCell,
  },
  provides: EndpointsCell,
  async start({ store, node, datapath, routing, ipcache, identities, policy, namespaces }, { config, log, api }) {
    const endpoints = new EndpointManager({
      store,
      ipam: addressAllocator(node.ipam),
      datapath,
      ipcache,
      identities,
      policy,
      mtu: () => routing.podMtu(),
      namespaceLabels: (namespace) => namespaces.labelsOf(namespace),
      log,
      nodeName: config.nodeName,
      refreshIntervalMs: config.reconcileRefreshInterval * 1000,
      linkPool: { target: config.endpointLinkPool ?? (datapath.attachMode === 'tcx' ? 4 : 0), datapath },
    });
    const unsubscribe = namespaces.onChange((namespace) =>
      endpoints.namespaceChanged(namespace).catch((error: unknown) => {
        log.error({ err: error, namespace }, 'moving endpoints to the identities of their new namespace labels failed');
      }),
    );
    await endpoints.start();
    const view = (endpoint: Endpoint): EndpointView => ({ ...endpoint, policyRevision: policy.enforcedRevision(endpoint.id) });
    api.route('GET', '/v1/endpoints', () => endpoints.list().map(view));
    api.route('GET', '/v1/endpoints/:id', ({ params }) => {
      const endpoint = endpoints.find(params.id, { prefix: true });
      return { ...view(endpoint), datapath: endpoints.status(`${endpoint.containerId}/${endpoint.ifname}`) };
    });
    api.route('POST', '/v1/endpoints', async ({ body }) => endpoints.add(parseRequest(AddEndpointBody, body, 'endpoint request')));
    api.route('PUT', '/v1/endpoints/:id/labels', async ({ params, body }) => endpoints.updateLabels(params.id, parseRequest(LabelsBody, body, 'endpoint labels')));
    api.route('PUT', '/v1/endpoints/:id/containers', async ({ params, body }) => endpoints.updateContainers(params.id, parseRequest(ContainersUpdateBody, body, 'endpoint containers').containers ?? undefined));
    api.route('GET', '/v1/endpoints/:containerId/:ifname/check', async ({ params }) => ({ problems: await endpoints.check(params.containerId, params.ifname) }));
    api.route('DELETE', '/v1/endpoints/:containerId/:ifname', async ({ params }) => ({
      deleted: await endpoints.delete(params.containerId, params.ifname),
    }));
    return {
      value: endpoints,
      stop: async () => {
        unsubscribe();
        await endpoints.stop();
      },
      status: () => ({
        endpoints: endpoints.list().length,
        datapath: { bpfRoot: config.bpfRoot, failures: endpoints.failures(), orphansRemoved: endpoints.orphansRemoved },
        linkPool: endpoints.poolStatus(),
      }),
      reconcilers: () => [endpoints.health(), endpoints.poolHealth()].filter((health) => health !== undefined),
    };
  },
});
