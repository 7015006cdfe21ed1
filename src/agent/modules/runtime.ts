/**
 * Tetragon's job on the agent: the process sensor (exec, fork, exit from BTF tracepoints), the
 * process cache, Tetragon's gRPC API (`tetragon.FineGuidanceSensors`, which a stock `tetra`
 * reads) on localhost:54321 and a root-only Unix socket, Tetragon's JSON export and metrics.
 *
 * Off in the full agent unless `--runtime-enabled`; `ciliate agent --runtime-only` runs it alone
 * on a plain host (RUNTIME_ONLY_MODULES). In the full agent, `runtime-pods` names each process's
 * pod from the endpoint that holds its network namespace. The sensor starts once every module
 * has, so the pod resolver is in place for the processes read from /proc too.
 * @module
 */
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { z } from 'zod';
import { listenAddressSetting, Registry, TetragonMetrics } from '../../metrics/index.ts';
import { POLICY_MODES, EventExporter, parseEventFilters, RuntimeObserver, TetragonServer, containerOfProcess, eventTypeOf, findContainerCgroups, processOf, type ScopePod, type SocketDestinations, type TetragonPod } from '../../runtime/index.ts';
import type { Endpoint, EndpointContainer } from '../endpoint.ts';
import { reservedIdentityInfos } from '../../policy/index.ts';
import { RESERVED_IDENTITY } from '../../identity/index.ts';
import { Addr, Prefix } from '../../net/index.ts';
import { labelMap } from '../policy-manager.ts';
import { bindAddress } from '../../observer/index.ts';
import { parseRequest } from '../api-errors.ts';
import { cell, defineModule } from '../module.ts';
import { VERSION } from '../version.ts';
import { apiConfig } from './api.ts';
import { EndpointDatapathCell, EndpointsCell, IdentitiesCell, IpcacheCell, ServicesCell } from './cells.ts';
import { serve } from './metrics.ts';
import { cgroup2Root } from './services.ts';

/** The runtime observer when the module runs (undefined when it is off). */
export const RuntimeCell = cell<RuntimeObserver | undefined>('runtime');

const MB = 1024 * 1024;

const PolicyBody = z.object({ yaml: z.string(), file: z.string().optional() });
/** A change of a loaded policy (ConfigureTracingPolicy's): enable or disable it, or set its mode. */
const PolicyChangeBody = z.object({ enable: z.boolean().optional(), mode: z.enum(POLICY_MODES).optional() }).strict();

export const runtimeConfig = {
  runtimeEnabled: z.boolean().default(false).describe('process exec/exit events and Tetragon\'s gRPC API (on with --runtime-only)'),
  runtimeServerAddress: listenAddressSetting('localhost:54321').describe("Tetragon's gRPC API on TCP, host:port; empty: Unix socket only (Tetragon's server-address)"),
  runtimeSocketPath: z.string().default('').describe("Tetragon's gRPC API on a Unix socket, root only (default: tetragon.sock beside --socket-path)"),
  runtimeExportFilename: z.string().default('').describe("file events are exported to, one JSON GetEventsResponse a line; empty: off (Tetragon's export-filename)"),
  runtimeExportFileMaxSizeMb: z.number().positive().default(10).describe("MB at which the export file is rotated (Tetragon's export-file-max-size-mb)"),
  runtimeExportFileMaxBackups: z.number().int().min(0).default(5).describe("rotated export files kept; 0 keeps all (Tetragon's export-file-max-backups)"),
  runtimeExportAllowlist: z.string().default('').describe('filters as JSON objects, one a line (\'{"event_set":["PROCESS_EXEC"]}\'); an event is exported when it matches one (Tetragon\'s export-allowlist)'),
  runtimeExportDenylist: z.string().default('').describe("filters as JSON objects; an event matching one is not exported (Tetragon's export-denylist)"),
  runtimeProcessCacheSize: z.number().int().min(64).max(1 << 22).default(65536).describe("processes the cache keeps, live and exited; the oldest go past it, counted as evictions (Tetragon's process-cache-size)"),
  runtimeProcessCacheGcInterval: z.number().min(0).default(10).describe('seconds an exited process with no live children stays for late events before it is collected'),
  runtimeEnableProcessCred: z.boolean().default(false).describe("capabilities in process objects (Tetragon's enable-process-cred)"),
  runtimeEnableProcessNs: z.boolean().default(false).describe("namespaces in process objects (Tetragon's enable-process-ns)"),
  runtimeEnableAncestors: z.boolean().default(false).describe("ancestors in exec events (Tetragon's enable-ancestors)"),
  runtimeTracingPolicyDir: z.string().default('').describe("directory of TracingPolicy YAML files loaded at start (Tetragon's tracing-policy-dir); empty: none"),
  runtimeEnforceCgroup: z
    .string()
    .default(cgroup2Root())
    .describe('cgroup v2 directory whose processes (and descendants\') policies overriding sys_connect, sys_bind or sys_socket are enforced on, at its socket hooks (default: the cgroup v2 root; empty: such policies are refused)'),
  runtimeMetricsServer: listenAddressSetting('').describe("address of Tetragon's Prometheus /metrics (tetragon_*), host:port; empty: off (Tetragon's metrics-server, :2112 there)"),
};

export const runtimeModule = defineModule({
  name: 'runtime',
  description: "process exec and exit events, the process cache and Tetragon's gRPC API",
  config: { ...runtimeConfig, socketPath: apiConfig.socketPath },
  needs: {},
  provides: RuntimeCell,
  async start(_needs, { config, log, onReady, api }) {
    if (!config.runtimeEnabled) return { value: undefined, status: () => ({ runtime: { enabled: false } }) };
    const exportFilters = {
      allowlist: parseEventFilters(config.runtimeExportAllowlist, 'runtimeExportAllowlist'),
      denylist: parseEventFilters(config.runtimeExportDenylist, 'runtimeExportDenylist'),
    };
    const observer = new RuntimeObserver({
      nodeName: config.nodeName,
      processCacheSize: config.runtimeProcessCacheSize,
      processCacheGraceMs: config.runtimeProcessCacheGcInterval * 1000,
      processCredentials: config.runtimeEnableProcessCred,
      processNamespaces: config.runtimeEnableProcessNs,
      ancestors: config.runtimeEnableAncestors,
      enforceCgroup: config.runtimeEnforceCgroup || undefined,
      onError: (error) => log.warn({ err: error }, 'runtime event'),
    });
    const server = new TetragonServer({ observer, version: VERSION });
    const socketPath = config.runtimeSocketPath || join(dirname(config.socketPath), 'tetragon.sock');
    const exporter = config.runtimeExportFilename
      ? new EventExporter({
          path: config.runtimeExportFilename,
          maxSizeBytes: Math.round(config.runtimeExportFileMaxSizeMb * MB),
          maxBackups: config.runtimeExportFileMaxBackups,
          ...exportFilters,
          onError: (error) => log.error({ err: error }, 'writing the runtime export file'),
        })
      : undefined;
    let stopMetrics: (() => Promise<void>) | undefined;
    if (config.runtimeMetricsServer) {
      const registry = new Registry();
      const metrics = new TetragonMetrics(registry, {
        processCache: () => observer.cache.stats(),
        ringbuf: () => {
          const stats = observer.stats();
          return { received: stats.records, lost: stats.lost };
        },
      });
      observer.subscribe((event) => {
        const process = processOf(event);
        metrics.event({ type: eventTypeOf(event), namespace: process.pod?.namespace ?? '', workload: process.pod?.workload ?? '', pod: process.pod?.name ?? '', binary: process.binary });
      });
      stopMetrics = serve(registry, config.runtimeMetricsServer, 'runtimeMetricsServer', log, onReady);
    }
    const unsubscribeExport = exporter ? observer.subscribe((event) => exporter.write(event)) : undefined;
    // The local API's view of TracingPolicies (what `tetra tracingpolicy` does over gRPC).
    api.route('POST', '/v1/runtime/policies', ({ body }) => observer.policies.add(parseRequest(PolicyBody, body, 'tracing policy add').yaml));
    api.route('GET', '/v1/runtime/policies', () => observer.policies.list());
    api.route('PATCH', '/v1/runtime/policies/:name', ({ params, body }) => observer.policies.configure(params.name, parseRequest(PolicyChangeBody, body, `tracing policy ${params.name}`)));
    api.route('DELETE', '/v1/runtime/policies/:name', ({ params }) => {
      observer.policies.delete(params.name);
      return { deleted: params.name };
    });
    let policiesLoaded = 0;
    let tcpPort: number | undefined;
    // After every module: runtime-pods has set the pod resolver by then, for /proc's processes too.
    onReady(async () => {
      await exporter?.open();
      observer.start();
      // Tetragon's --tracing-policy-dir: every policy there, each whole or not at all; one that
      // fails is named in the log and the others still load (a bad file must not blind the node).
      if (config.runtimeTracingPolicyDir) {
        for (const file of readdirSync(config.runtimeTracingPolicyDir).filter((f) => /\.ya?ml$/.test(f)).sort()) {
          const path = join(config.runtimeTracingPolicyDir, file);
          try {
            observer.policies.add(readFileSync(path, 'utf8'));
            policiesLoaded++;
          } catch (error) {
            log.error({ err: error, file: path }, 'tracing policy not loaded');
          }
        }
      }
      await server.listenUnix(socketPath);
      if (config.runtimeServerAddress) tcpPort = await server.listenTcp(bindAddress(config.runtimeServerAddress));
      log.info({ socket: socketPath, address: config.runtimeServerAddress || undefined, processes: observer.cache.size }, "Tetragon's API listening");
    });
    return {
      value: observer,
      stop: async () => {
        server.close();
        observer.stop();
        unsubscribeExport?.();
        await exporter?.close();
        await stopMetrics?.();
      },
      status: () => {
        const stats = observer.stats();
        return {
          runtime: {
            enabled: true,
            socket: socketPath,
            address: config.runtimeServerAddress || undefined,
            port: tcpPort,
            events: stats.events,
            programs: stats.programs,
            policies: stats.programs.length > 0 ? observer.policies.list().map((p) => ({ name: p.name, sensors: p.sensors, posted: String(p.stats.posted), signalled: String(p.stats.signalled), ...('refused' in p.stats ? { refused: String(p.stats.refused) } : {}) })) : [],
            enforceCgroup: config.runtimeEnforceCgroup || 'off',
            policiesLoadedAtStart: policiesLoaded,
            lostEvents: String(stats.lost),
            processCache: stats.processCache,
            streamsDropped: server.dropped,
            export: exporter?.stats(),
          },
        };
      },
      health: () => ({ degraded: false, lostEvents: String(observer.stats().lost) }),
    };
  },
});

/** Pod fields of a process in an endpoint's network namespace; `container`: the one it runs in, when known. */
function podOf(endpoint: { podName?: string; namespace?: string; containerId: string; labels: Record<string, string> }, container?: EndpointContainer): TetragonPod {
  const labels: Record<string, string> = {};
  // Ciliate's endpoint labels carry their source (k8s:app=x); Tetragon's pod_labels do not.
  for (const [key, value] of Object.entries(endpoint.labels)) labels[key.replace(/^k8s:/, '')] = value;
  const name = endpoint.podName ?? endpoint.containerId;
  const tetragonContainer = container ? { id: container.id, name: container.name, image: container.image ? { name: container.image } : undefined } : { id: endpoint.containerId };
  return { namespace: endpoint.namespace ?? 'default', name, container: tetragonContainer, pod_labels: labels, workload: name };
}

/** An endpoint whose network namespace the runtime sensor saw, and what scoped policies read of it. */
interface PodEntry {
  endpoint: Endpoint;
  netns: number;
  /** Its containers' ids (none known: empty). */
  ids: Set<string>;
}

export const runtimePodsModule = defineModule({
  name: 'runtime-pods',
  description: 'names the pod (and container) of each process the runtime sensor sees, and scopes tracing policies to pods and containers in the kernel, from the endpoints holding their network namespaces and the cgroups of their containers',
  needs: { runtime: RuntimeCell, endpoints: EndpointsCell },
  start({ runtime, endpoints }, { log }) {
    if (!runtime) return { value: undefined };
    const root = cgroup2Root();
    let byNetns = new Map<number, PodEntry>();
    /** Each known container's cgroups, by container id: found under the cgroup root, or by a process in one. */
    let cgroups = new Map<string, bigint[]>();
    /** The container of each cgroup a process was seen in (null: none), for pod resolution. */
    let byCgroup = new Map<bigint, { id: string } | null>();
    let indexed = -1;
    // podSelector, namespaced and containerSelector policies follow the pods and containers.
    const rescope = () => {
      const scoped: ScopePod[] = [...byNetns.values()].map(({ endpoint, netns }) => ({
        netns,
        namespace: endpoint.namespace ?? 'default',
        labels: endpoint.labels,
        ...(endpoint.containers ? { containers: endpoint.containers.map((c) => ({ ...c, cgroups: cgroups.get(c.id) ?? [] })) } : {}),
      }));
      try {
        runtime.setScopePods(scoped);
      } catch (error) {
        // A full map: what was written stays (the manager knows it); the next endpoint change retries.
        log.error({ err: error }, 'tracing policies not rescoped to the pods');
      }
    };
    // Rebuilt when the endpoint table changes, not per exec: one stat per endpoint per change, and
    // a walk of the cgroup tree when endpoints name containers.
    const index = () => {
      const revision = endpoints.table.revision;
      if (revision === indexed) return;
      indexed = revision;
      const next = new Map<number, PodEntry>();
      for (const endpoint of endpoints.list()) {
        try {
          const netns = statSync(endpoint.netns).ino;
          next.set(netns, { endpoint, netns, ids: new Set((endpoint.containers ?? []).map((c) => c.id)) });
        } catch {
          // A namespace gone before its endpoint: no process can be in it.
        }
      }
      byNetns = next;
      cgroups = findContainerCgroups(root, new Set([...next.values()].flatMap((entry) => [...entry.ids])));
      byCgroup = new Map();
      for (const [id, list] of cgroups) for (const cgroup of list) byCgroup.set(cgroup, { id });
      rescope();
    };
    // A container's cgroup made after its endpoint named it (podman runs CNI before runc makes
    // the cgroup) is learned from the first process seen in it; its policies apply from then on.
    const containerOf = (entry: PodEntry, pid: number, cgroup: bigint): EndpointContainer | undefined => {
      if (entry.ids.size === 0) return undefined;
      let known = cgroup ? byCgroup.get(cgroup) : undefined;
      if (known === undefined) {
        const found = containerOfProcess(root, pid, entry.ids);
        if (found === undefined) return undefined;
        known = found && { id: found.id };
        if (cgroup) byCgroup.set(cgroup, known);
        if (found && !cgroups.get(found.id)?.includes(found.cgroup)) {
          cgroups.set(found.id, [...(cgroups.get(found.id) ?? []), found.cgroup]);
          byCgroup.set(found.cgroup, known);
          rescope();
        }
      }
      return known ? entry.endpoint.containers?.find((c) => c.id === known.id) : undefined;
    };
    runtime.setPodResolver(({ pid, netns, cgroupId }) => {
      index();
      const entry = byNetns.get(netns);
      return entry && podOf(entry.endpoint, containerOf(entry, pid, cgroupId));
    });
    const stopped = new AbortController();
    void (async () => {
      while (!stopped.signal.aborted) {
        index();
        await endpoints.table.waitForChange(indexed, stopped.signal).catch(() => undefined);
      }
    })();
    return {
      value: undefined,
      stop: () => {
        stopped.abort();
        runtime.setPodResolver(undefined);
      },
    };
  },
});

/**
 * Destinations by identity and by service for socket-enforcing TracingPolicies (`DIdentity`,
 * `DService`): the identities the allocator knows (and the reserved ones), the datapath's ipcache
 * (the hooks read its pinned map; the agent reads its table for backends' identities) and the
 * services' frontends and backends. Not in `--runtime-only`, which has none of them.
 */
export const runtimeDestinationsModule = defineModule({
  name: 'runtime-destinations',
  description: 'lets tracing policies overriding sys_connect name destinations by identity (labels) or service, sets kept as identities, pods and services change',
  needs: { runtime: RuntimeCell, identities: IdentitiesCell, ipcache: IpcacheCell, services: ServicesCell, datapath: EndpointDatapathCell },
  start({ runtime, identities, ipcache, services, datapath }) {
    if (!runtime) return { value: undefined };
    const reserved = reservedIdentityInfos();
    const listeners = new Set<() => void>();
    const notify = () => {
      for (const listener of listeners) listener();
    };
    const stopped = new AbortController();
    const unsubscribe = [identities.subscribe(notify), services.subscribe(notify)];
    // A backend's identity is the ipcache's: its changes move the frontends of identity sets.
    void (async () => {
      let revision = ipcache.table.revision;
      while (!stopped.signal.aborted) {
        await ipcache.table.waitForChange(revision, stopped.signal).catch(() => undefined);
        revision = ipcache.table.revision;
        if (!stopped.signal.aborted) notify();
      }
    })();
    const destinations: SocketDestinations = {
      ipcachePinDir: datapath.mapsDir,
      identities: () => [...reserved, ...[...identities.list(), ...identities.listLocal()].map((i) => ({ id: i.id, labels: labelMap(i.labels) }))],
      hasService: (key) => services.services.get(key) !== undefined,
      *frontends() {
        for (const f of services.frontends.all()) yield { service: f.service, vip: f.vip, port: f.port, protocol: f.protocol, backends: [...f.backends, ...(f.terminating ?? [])] };
      },
      identityOf(ip) {
        const exact = ipcache.table.get(`${ip}/32`);
        if (exact) return exact.identity;
        // The longest prefix holding it, as the kernel's LPM lookup finds it.
        const addr = Addr.tryParse(ip);
        let best: { bits: number; identity: number } | undefined;
        for (const entry of ipcache.table.all()) {
          const prefix = Prefix.tryParse(entry.prefix, { bareAddress: true, hostBits: 'mask' });
          if (addr && prefix?.contains(addr) && (!best || prefix.bits > best.bits)) best = { bits: prefix.bits, identity: entry.identity };
        }
        return best?.identity ?? RESERVED_IDENTITY.world;
      },
      subscribe(listener) {
        listeners.add(listener);
        return () => listeners.delete(listener);
      },
    };
    runtime.setSocketDestinations(destinations);
    return {
      value: undefined,
      stop: () => {
        stopped.abort();
        for (const u of unsubscribe) u();
        listeners.clear();
      },
    };
  },
});
