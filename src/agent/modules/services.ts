/**
 * Services: definitions in the shared store (`services/`, this module's prefix), the cluster's
 * pods they select, the frontends this node balances, and the services API.
 * @module
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import {
  BACKEND_STATES,
  HostDatapath,
  LbDatapath,
  DEFAULT_MAGLEV_HASH_SEED,
  DEFAULT_MAGLEV_TABLE_SIZE,
  isMaglevTableSize,
  MAGLEV_TABLE_SIZES,
  maglevSeed,
  namedPortsSchema,
  resolveDevices,
  SERVICE_SPECS_PREFIX,
  ServiceManager,
  serviceKey,
  serviceRefSchema,
  servicesFromManifest,
  serviceRequestSchema,
  type Service,
  type SockEndpointEntry,
} from '../../loadbalancer/index.ts';
import { netnsCookie } from '../../datapath/index.ts';
import { Addr, Prefix } from '../../net/index.ts';
import { Table } from '../../statedb/index.ts';
import type { Endpoint } from '../endpoint.ts';
import { ENDPOINTS_PREFIX, nodeEndpointsPrefix } from '../endpoint.ts';
import { ConfigError, ipv4Cidr } from '../config.ts';
import { followPrefix } from '../follow.ts';
import { parseRequest } from '../api-errors.ts';
import { defineModule } from '../module.ts';
import { EndpointsCell, NodeCell, PolicyCell, ServicesCell, StoreCell } from './cells.ts';

const NODE_PORT_RANGE = /^(\d{1,5})-(\d{1,5})$/;

const ImportBody = z.object({ yaml: z.string().min(1), file: z.string().default('<api>') }).strict();
const BackendRef = serviceRefSchema.extend({ ip: z.string().refine((text) => Addr.tryParse(text)?.is4() === true, 'must be an IPv4 address (a.b.c.d)') });
const BackendBody = z.object({ state: z.enum(BACKEND_STATES, { error: `must be one of ${BACKEND_STATES.join(', ')}` }) }).strict();

/** How long a write waits for this node's view to show it before answering anyway (a stalled watch is logged). */
const SYNC_WAIT_MS = 5000;

/** Where the cgroup v2 hierarchy is mounted (its root), from /proc/self/mounts; '' without one. */
export function cgroup2Root(): string {
  try {
    const line = readFileSync('/proc/self/mounts', 'utf8').split('\n').find((l) => l.split(' ')[2] === 'cgroup2');
    return line?.split(' ')[1] ?? '';
  } catch {
    return '';
  }
}

export const servicesConfig = {
  /** Kubernetes' kube-apiserver default; must not overlap the cluster CIDR (pods' 10.244.0.0/16). */
  serviceCidr: ipv4Cidr.default('10.96.0.0/16').describe('ClusterIPs of services are allocated from this CIDR'),
  nodePortRange: z
    .string()
    .refine((text) => {
      const match = NODE_PORT_RANGE.exec(text);
      return match !== null && Number(match[1]) >= 1 && Number(match[1]) <= Number(match[2]) && Number(match[2]) <= 65535;
    }, 'must be MIN-MAX, two ports with MIN ≤ MAX, e.g. 30000-32767')
    .default('30000-32767')
    .describe('node ports of NodePort and LoadBalancer services come from this range'),
  /**
   * Cilium attaches its socket hooks to the cgroup v2 root, so every process of the node gets
   * service translation; a narrower cgroup limits it to its processes (tests use one of their own).
   */
  socketLbCgroup: z
    .string()
    .default(cgroup2Root())
    .describe('cgroup v2 directory whose processes connect to services through the socket hooks (default: the cgroup v2 root, as Cilium; empty: off)'),
  /** Cilium's --bpf-lb-algorithm. */
  lbAlgorithm: z.enum(['random', 'maglev']).default('random').describe('how a frontend picks a backend for a new connection: random or maglev'),
  /** Cilium's --bpf-lb-maglev-table-size. */
  maglevTableSize: z
    .number()
    .int()
    .refine(isMaglevTableSize, `must be one of ${MAGLEV_TABLE_SIZES.join(', ')}`)
    .default(DEFAULT_MAGLEV_TABLE_SIZE)
    .describe(`slots of each service's Maglev table, one of ${MAGLEV_TABLE_SIZES.join(', ')} (at least 100 per backend for shares within 1 %)`),
  /**
   * Cilium's --devices: where NodePort, LoadBalancer and external IPs are served to clients outside
   * the cluster (bpf_host on TCX). Empty: the device holding the node's address, as Cilium detects it.
   */
  devices: z
    .string()
    .regex(/^[\w.@:-]*(,[\w.@:-]+)*$/, 'must be interface names separated by commas')
    .default('')
    .describe("external devices for NodePort/LoadBalancer/externalIP traffic from outside (comma-separated; empty: the device holding the node address; 'none': off)"),
  /** Cilium's --bpf-lb-mode. */
  lbMode: z
    .enum(['snat', 'dsr'])
    .default('snat')
    .describe('north-south: snat (a backend on another node answers through the node the client reached) or dsr (it answers the client directly and sees its address; tunnel mode)'),
  /** Cilium's --bpf-lb-maglev-hash-seed: every node must have the same. */
  maglevHashSeed: z
    .string()
    .refine((seed) => Buffer.from(seed, 'base64').length >= 4, 'must be base64 of at least 4 bytes')
    .default(DEFAULT_MAGLEV_HASH_SEED)
    .describe('seed of the Maglev permutations, the same on every node (base64, e.g. head -c12 /dev/urandom | base64)'),
};

function nodePortRange(text: string): { min: number; max: number } {
  const [, min, max] = NODE_PORT_RANGE.exec(text)!;
  return { min: Number(min), max: Number(max) };
}

/** A service as the API shows it: the definition and the frontends this node balances. */
export type ServiceView = Service & { frontends: { address: string; kind: string; backends: string[]; terminating?: string[]; unresolved?: string[] }[] };

export const servicesModule = defineModule({
  name: 'services',
  description: 'services (ClusterIP, NodePort, LoadBalancer) from the store, their backends among the cluster\'s pods, and the services API',
  config: servicesConfig,
  needs: { store: StoreCell, endpoints: EndpointsCell, node: NodeCell, policy: PolicyCell },
  provides: ServicesCell,
  async start({ store, endpoints, node, policy }, { config, log, api }) {
    const serviceCidr = Prefix.parse(config.serviceCidr, { family: 4 });
    const clusterCidr = Prefix.parse(config.clusterCidr, { family: 4 });
    if (serviceCidr.overlaps(clusterCidr)) {
      throw new ConfigError(`serviceCidr ${serviceCidr} overlaps clusterCidr ${clusterCidr}: a ClusterIP must never be a pod's address`);
    }
    const limits = { serviceCidr: config.serviceCidr, nodePortRange: nodePortRange(config.nodePortRange), clusterCidr: config.clusterCidr };
    const schema = serviceRequestSchema(limits);
    const services = new ServiceManager({ store, limits, log, nodeAddresses: [node.record.nodeIp] });
    const abort = new AbortController();
    const onEnd = (prefix: string) => (error: unknown, compacted: boolean) => log.error({ err: error, prefix, compacted }, 'watch ended; services are stale');
    // Pods first, so a listed service resolves its backends at once.
    const pods = await followPrefix<Endpoint>(store, ENDPOINTS_PREFIX, {
      signal: abort.signal,
      onEnd: onEnd(ENDPOINTS_PREFIX),
      apply: (event) => {
        if (event.type === 'delete') services.deletePod(event.key);
        else {
          // Another node's record: ports that are not what an endpoint add accepts resolve nothing.
          const ports = event.value.ports === undefined ? undefined : namedPortsSchema.safeParse(event.value.ports);
          if (ports?.success === false) log.warn({ endpoint: event.key }, 'endpoint record with malformed ports; its named ports are ignored');
          services.upsertPod({ key: event.key, ipv4: event.value.ipv4, namespace: event.value.namespace ?? 'default', labels: event.value.labels ?? {}, ...(ports?.success ? { ports: ports.data } : {}) });
        }
      },
    });
    const specs = await followPrefix<Service>(store, SERVICE_SPECS_PREFIX, { signal: abort.signal, onEnd: onEnd(SERVICE_SPECS_PREFIX), apply: (event) => services.applyServiceEvent(event) });
    services.listed(specs.revision);
    // A local pod turns terminating in its services the moment the endpoint manager lets it go,
    // before its interface is deleted: no new connection is given it (it would find no pod),
    // established ones keep their backend entry. Its store record going ends it everywhere.
    // The socket hooks name the endpoint a refused connection comes from by its network
    // namespace: each local endpoint under its namespace's cookie.
    const sockEndpoints = new Table<SockEndpointEntry>('sock-endpoints', (e) => e.netnsCookie, { equals: (a, b) => JSON.stringify(a) === JSON.stringify(b) });
    const cookieOf = new Map<string, string>();
    const local = endpoints.table.changes();
    const localPrefix = nodeEndpointsPrefix(config.nodeName);
    const localLoop = (async () => {
      while (!abort.signal.aborted) {
        for (const change of local.next()) {
          const cookie = cookieOf.get(change.key);
          if (change.deleted) {
            services.terminatePod(`${localPrefix}${change.key}`);
            cookieOf.delete(change.key);
            if (cookie !== undefined && sockEndpoints.get(cookie)?.endpointId === change.object.id) sockEndpoints.delete(cookie);
            continue;
          }
          const ep = change.object;
          try {
            const key = cookie ?? String(netnsCookie(ep.netns));
            cookieOf.set(change.key, key);
            sockEndpoints.upsert({ netnsCookie: key, endpointId: ep.id, identity: ep.identity, ipv4: ep.ipv4 });
          } catch (error) {
            // Only the flows of its refused connections lose their source.
            log.warn({ endpoint: change.key, netns: ep.netns, err: error }, 'reading the network namespace cookie of an endpoint failed');
          }
        }
        await local.wait(abort.signal);
      }
    })();
    const stopWatches = async () => {
      abort.abort();
      await Promise.allSettled([pods.loop, specs.loop, localLoop]);
      local.close();
    };
    let datapath: LbDatapath;
    try {
      // Every service is in the frontends table by now: the first refresh may prune what is left of deleted ones.
      datapath = new LbDatapath({
        bpfRoot: config.bpfRoot,
        frontends: services.frontends,
        algorithm: config.lbAlgorithm,
        maglevSeed: maglevSeed(config.maglevHashSeed),
        maglevTableSize: config.maglevTableSize,
        log,
        refreshIntervalMs: config.reconcileRefreshInterval * 1000,
        sockEndpoints,
      });
    } catch (error) {
      await stopWatches();
      throw error;
    }
    try {
      datapath.start();
      // Tried, not necessarily done: a frontend that cannot be written (a full map) is retried and
      // makes the agent degraded, it does not keep the agent from starting.
      await datapath.attempted();
      datapath.releaseOrphans();
      if (config.socketLbCgroup) datapath.attach(config.socketLbCgroup);
      else datapath.detach();
    } catch (error) {
      await datapath.stop();
      await stopWatches();
      throw error;
    }
    let host: HostDatapath | undefined;
    let devices: string[] = [];
    try {
      host = new HostDatapath({ bpfRoot: config.bpfRoot, nodeIp: node.record.nodeIp, mode: config.lbMode });
      if (config.devices === 'none') host.detach();
      else {
        devices = resolveDevices(config.devices, node.record.nodeIp);
        host.attach(devices);
      }
    } catch (error) {
      host?.close();
      await datapath.stop();
      await stopWatches();
      throw error;
    }

    // toServices policies follow the services and their backends; a burst of changes (a listing,
    // a deployment's pods) is one recomputation.
    let policyQueued: NodeJS.Immediate | undefined;
    const unsubscribe = services.subscribe(() => {
      policyQueued ??= setImmediate(() => {
        policyQueued = undefined;
        policy.servicesChanged();
      });
    });
    policy.setServiceResolver((peer) => services.policyPeers(peer));

    const view = (service: Service): ServiceView => ({
      ...service,
      frontends: services.frontendsOf(serviceKey(service)).map((f) => ({
        address: f.key,
        kind: f.kind,
        backends: f.backends.map((b) => `${b.ip}:${b.port}`),
        ...(f.terminating ? { terminating: f.terminating.map((b) => `${b.ip}:${b.port}`) } : {}),
        ...(f.unresolved ? { unresolved: f.unresolved } : {}),
      })),
    });
    api.route('GET', '/v1/services', () => services.list().map(view));
    const ref = (params: Record<string, string>) => parseRequest(serviceRefSchema, params, 'service');
    api.route('GET', '/v1/services/:namespace/:name', ({ params }) => {
      const { namespace, name } = ref(params);
      return view(services.get(namespace, name));
    });
    api.route('POST', '/v1/services', async ({ body }) => {
      const { service, revision } = await services.create(parseRequest(schema, body, 'service'));
      // Answer once this node's view has it: a `service get` right after sees it.
      await services.synced(revision, SYNC_WAIT_MS);
      return { ...view(services.services.get(serviceKey(service)) ?? service), revision };
    });
    api.route('POST', '/v1/services/import', async ({ body }) => {
      const { yaml, file } = parseRequest(ImportBody, body, 'service import');
      const created = await services.createMany(servicesFromManifest(yaml, file, schema));
      await services.synced(created.revision, SYNC_WAIT_MS);
      return { services: created.services.map((s) => ({ service: serviceKey(s), clusterIP: s.clusterIP })), revision: created.revision };
    });
    api.route('GET', '/v1/lb/maps', () => datapath.entries());
    const backendRef = (params: Record<string, string>) => parseRequest(BackendRef, params, 'service backend');
    // A drained backend takes no new connection once the command returns: wait for the maps too
    // (bounded: a frontend that keeps failing elsewhere must not hold the answer).
    const backendWritten = async (revision: number) => {
      await services.synced(revision, SYNC_WAIT_MS);
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([datapath.synced(), new Promise<void>((resolve) => (timer = setTimeout(resolve, SYNC_WAIT_MS)))]);
      clearTimeout(timer);
    };
    api.route('PUT', '/v1/services/:namespace/:name/backends/:ip', async ({ params, body }) => {
      const { namespace, name, ip } = backendRef(params);
      const { state } = parseRequest(BackendBody, body, 'service backend');
      const { service, revision } = await services.setBackend(namespace, name, ip, state);
      await backendWritten(revision);
      return { ...view(services.services.get(serviceKey(service)) ?? service), revision };
    });
    api.route('DELETE', '/v1/services/:namespace/:name/backends/:ip', async ({ params }) => {
      const { namespace, name, ip } = backendRef(params);
      const { service, revision } = await services.setBackend(namespace, name, ip, undefined);
      await backendWritten(revision);
      return { ...view(services.services.get(serviceKey(service)) ?? service), revision };
    });
    api.route('DELETE', '/v1/services/:namespace/:name', async ({ params }) => {
      const { namespace, name } = ref(params);
      const { revision } = await services.delete(namespace, name);
      await services.synced(revision, SYNC_WAIT_MS);
      return { deleted: `${namespace}/${name}`, revision };
    });
    return {
      value: services,
      stop: async () => {
        unsubscribe();
        clearImmediate(policyQueued);
        await stopWatches();
        host?.close();
        await datapath.stop();
      },
      status: () => ({ services: { services: services.services.size, frontends: services.frontends.size, algorithm: config.lbAlgorithm, socketLbCgroup: config.socketLbCgroup || 'off', devices: devices.length > 0 ? devices : 'off', lbMode: config.lbMode } }),
      reconcilers: () => [datapath.health(), ...(datapath.sockEndpointsHealth() ? [datapath.sockEndpointsHealth()!] : [])],
    };
  },
});
