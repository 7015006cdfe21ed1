/**
 * The node's L7 proxy (Cilium's enable-l7-proxy): the routing that delivers redirected
 * connections to it, the supervised proxy process, and the policy it judges with, sent whole
 * whenever the policy or the local endpoints change. Its L7 records go to whoever subscribes
 * (the observer).
 * @module
 */
import { join } from 'node:path';
import type { Logger } from 'pino';
import { z } from 'zod';
import { MapName, Netlink, ensureProxyLookup } from '../../datapath/index.ts';
import { L7RecordFanout, type L7HttpRecord } from '../../observer/index.ts';
import { L7_PROXY_PORT, PolicyDirection, type PolicyMapEntry } from '../../policy/index.ts';
import { ProxySupervisor, type ProxyState } from '../../proxy/index.ts';
import { defineModule } from '../module.ts';
import { ClusterCell, EndpointsCell, IpcacheCell, PolicyCell, ProxyCell } from './cells.ts';

export const proxyConfig = {
  enableL7Proxy: z.boolean().default(true).describe("the node proxy that enforces HTTP rules (Cilium's enable-l7-proxy); off: connections policy sends to it are dropped"),
  l7ProxyMaxHeapMb: z.number().int().min(32).max(8192).default(256).describe("heap cap of the proxy process, MiB (it is restarted when it dies)"),
};

/** Cilium's: packets marked MARK_MAGIC_TO_PROXY (bpf/lib/proxy.h) are delivered locally. */
const TO_PROXY_RULE = { priority: 9, mark: 0x0200, mask: 0x0f00, table: 2004 } as const;

/** The rule and route that deliver what the datapath redirects to a proxy (HTTP or DNS) locally. */
export async function ensureToProxyRouting(): Promise<void> {
  const netlink = Netlink.open();
  try {
    await netlink.ensureFwmarkRule(TO_PROXY_RULE);
    await netlink.replaceRoute({ dst: '0.0.0.0/0', type: 'local', dev: 'lo', table: TO_PROXY_RULE.table });
  } finally {
    netlink.close();
  }
}

/**
 * Off, for connections hairpinned to the proxy (bpf/lib/proxy.h): the proxy's socket of such a
 * connection has the pod's address as its own, in the node's namespace, so TCP early demux would
 * find it for the client's packets as they arrive on the uplink, before the datapath marks them
 * (at the pod's veth), and the stack then refuses to forward a packet that has a socket: every
 * packet after the SYN would be lost. Without early demux the stack routes them to the pod's veth
 * and cil_to_container hands them on. The cost is a route lookup per received segment of the
 * node's own TCP connections where the cached one sufficed. Per network namespace.
 */
export function disableTcpEarlyDemux(): void {
  using nl = Netlink.open();
  nl.writeSysctl('net.ipv4.tcp_early_demux', '0');
}

/**
 * The proxies' socket lookup on the node's namespace (src/datapath/proxy-lookup.ts), for a client
 * that reuses the 4-tuple of a connection a proxy closed first (bpf/lib/proxy.h). Returns the pin
 * of the map the proxies put their listeners in, or undefined when it could not be attached: a
 * listener in that map tells the datapath the lookup is there, so none may be put then.
 */
export function attachProxyLookup(bpfRoot: string, log: Logger): string | undefined {
  try {
    ensureProxyLookup(bpfRoot);
    return join(bpfRoot, 'maps', MapName.PROXY_LISTENERS);
  } catch (error) {
    log.warn({ err: error }, 'the proxies\' socket lookup (BPF_SK_LOOKUP) could not be attached: a client reusing the 4-tuple of a connection a proxy closed first is dropped where a listener of the node would take it');
    return undefined;
  }
}

type IdentityPairs = ProxyState['identities'];

/**
 * Every local and remote pod address with its identity: whom the proxy may be talking to. Other
 * nodes' pods reach this node's proxy through the tunnel (bpf_overlay.c); their source addresses
 * were checked by their own node's datapath.
 */
function podIdentities(local: Iterable<{ ipv4: string; identity: number }>, remote: Iterable<{ ipv4: string; identity: number }>): IdentityPairs {
  const out: IdentityPairs = [];
  for (const e of remote) if (e.ipv4) out.push([e.ipv4, e.identity]);
  for (const e of local) if (e.ipv4) out.push([e.ipv4, e.identity]);
  return out;
}

/** The entries with HTTP rules of each local endpoint that has any (most have none), by direction. */
function l7Policies(endpoints: Iterable<{ ipv4: string; id: number }>, entriesOf: (id: number) => Iterable<PolicyMapEntry> | undefined): Pick<ProxyState, 'policies' | 'egress'> {
  const policies: ProxyState['policies'] = [];
  const egress: NonNullable<ProxyState['egress']> = [];
  for (const e of endpoints) {
    if (!e.ipv4) continue;
    let ingressEntries: PolicyMapEntry[] | undefined;
    let egressEntries: PolicyMapEntry[] | undefined;
    for (const x of entriesOf(e.id) ?? []) {
      if (x.l7 === undefined) continue;
      if (x.key.direction === PolicyDirection.INGRESS) (ingressEntries ??= []).push(x);
      else (egressEntries ??= []).push(x);
    }
    if (ingressEntries) policies.push({ address: e.ipv4, entries: ingressEntries });
    if (egressEntries) egress.push({ address: e.ipv4, entries: egressEntries });
  }
  return { policies, egress };
}

export const proxyModule = defineModule({
  name: 'l7-proxy',
  description: 'the node proxy for L7 (HTTP) rules, in its own process',
  config: proxyConfig,
  needs: { policy: PolicyCell, endpoints: EndpointsCell, cluster: ClusterCell, ipcache: IpcacheCell },
  provides: ProxyCell,
  async start({ policy, endpoints, cluster, ipcache }, { config, log }) {
    const source = new L7RecordFanout<L7HttpRecord>();
    let lost = 0;
    if (!config.enableL7Proxy) return { value: source, status: () => ({ l7Proxy: { enabled: false } }) };

    await ensureToProxyRouting();
    disableTcpEarlyDemux();
    const listenersPin = attachProxyLookup(config.bpfRoot, log);

    const supervisor = new ProxySupervisor({
      port: L7_PROXY_PORT,
      log,
      maxHeapMb: config.l7ProxyMaxHeapMb,
      originsPin: join(config.bpfRoot, 'maps', MapName.PROXY4),
      ...(listenersPin ? { listenersPin } : {}),
      onRecords(records, dropped) {
        lost += dropped;
        source.emit(records);
      },
    });
    // Sent whole, but only when it changed: the identities only when a table of pods moved, the
    // policies (L7 entries only, few) compared as text.
    let sentPolicies = '';
    let identityRevisions = '';
    let identities: IdentityPairs = [];
    let prefixes: [string, number][] = [];
    const sync = () => {
      const revisions = `${endpoints.table.revision}/${cluster.remoteEndpoints.revision}/${ipcache.table.revision}`;
      const moved = revisions !== identityRevisions;
      if (moved) {
        identityRevisions = revisions;
        identities = podIdentities(endpoints.list(), cluster.remoteEndpoints.all());
        // The destinations an egress rule names outside the pods (CIDR identities, nodes).
        prefixes = [...ipcache.table.all()].map((e) => [e.prefix, e.identity]);
      }
      const { policies, egress } = l7Policies(endpoints.list(), (id) => policy.engine.endpointPolicy(id)?.entries.values());
      const text = JSON.stringify([policies, egress]);
      if (!moved && text === sentPolicies) return;
      sentPolicies = text;
      supervisor.setState({ revision: policy.revision, identities, policies, egress, prefixes });
    };
    let scheduled = false;
    const schedule = () => {
      if (scheduled) return;
      scheduled = true;
      setImmediate(() => {
        scheduled = false;
        sync();
      });
    };
    sync();
    const unsubscribe = policy.onChange(schedule);
    const abort = new AbortController();
    for (const table of [endpoints.table, cluster.remoteEndpoints, ipcache.table]) {
      void (async () => {
        let revision = table.revision;
        while (!abort.signal.aborted) {
          await table.waitForChange(revision, abort.signal).catch(() => undefined);
          revision = table.revision;
          schedule();
        }
      })();
    }
    // The agent starts all the same when the proxy cannot listen (a port taken, say): L7 ports
    // then drop their connections, the module reports degraded, and the supervisor keeps trying.
    await supervisor.start().catch((error: unknown) => log.error({ err: error }, 'the L7 proxy is not listening; connections to ports with L7 rules are dropped until it is'));
    return {
      value: source,
      stop: async () => {
        unsubscribe();
        abort.abort();
        await supervisor.stop();
      },
      status: () => ({ l7Proxy: { enabled: true, port: L7_PROXY_PORT, ...supervisor.status(), lostRecords: lost } }),
      health: () => {
        const s = supervisor.status();
        return s.ready ? { degraded: false } : { degraded: true, reason: `the L7 proxy is not listening (restarts: ${s.restarts}${s.lastExit ? `, last exit: ${s.lastExit}` : ''})` };
      },
    };
  },
});
