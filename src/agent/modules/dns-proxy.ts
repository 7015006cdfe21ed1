/**
 * DNS-based policy: the DNS proxy (an endpoint's queries checked against its `rules.dns`, the
 * allowed ones forwarded to the resolver they were sent to) and the FQDN cache its answers fill,
 * which turns `toFQDNs` into the addresses the endpoints were told, allowed in their policy maps
 * until the answers' TTL runs out. The cache is kept in the state directory across restarts.
 *
 * Pod DNS traffic reaches it through the datapath's redirect (the dns-redirect module below);
 * `POST /v1/fqdn/query` asks it on an endpoint's behalf, for tools and tests.
 * @module
 */
import { join } from 'node:path';
import { z } from 'zod';
import { DnsProxy, DnsRedirectWorker, FqdnCache, DEFAULT_MAX_IPS_PER_NAME, DEFAULT_MIN_TTL, presentationName, wallClockNs, type AnswerAddress, type DnsOutcome, type DnsQuery, type EndpointContext, type HandledQuery, type Resolver } from '../../fqdn/index.ts';
import { MapName } from '../../datapath/index.ts';
import { L7RecordFanout, type L7DnsRecord } from '../../observer/index.ts';
import { DNS_PROXY_PORT, dnsVerdictAllows, type DnsVerdict } from '../../policy/index.ts';
import { Addr } from '../../net/index.ts';
import { parseRequest, RequestError } from '../api-errors.ts';
import { defineModule } from '../module.ts';
import { DnsProxyCell, EndpointsCell, PolicyCell } from './cells.ts';
import { attachProxyLookup, ensureToProxyRouting } from './proxy.ts';
import { storeConfig } from './store.ts';

export const dnsProxyConfig = {
  stateDir: storeConfig.stateDir,
  tofqdnsMinTtl: z
    .number()
    .int()
    .min(0)
    .max(86_400)
    .default(DEFAULT_MIN_TTL)
    .describe("seconds an address learned from a DNS answer stays allowed at least, whatever the answer's TTL (Cilium's tofqdns-min-ttl)"),
  tofqdnsEndpointMaxIpPerHostname: z
    .number()
    .int()
    .min(1)
    .max(10_000)
    .default(DEFAULT_MAX_IPS_PER_NAME)
    .describe('addresses kept per DNS name per endpoint; the ones that expire first go (Cilium\'s tofqdns-endpoint-max-ip-per-hostname)'),
  tofqdnsDnsRejectResponseCode: z
    .enum(['refused', 'nameError'])
    .default('refused')
    .describe("the answer to a query the endpoint's DNS rules do not allow: refused (REFUSED) or nameError (NXDOMAIN) (Cilium's tofqdns-dns-reject-response-code)"),
  tofqdnsProxyResponseMaxDelay: z
    .number()
    .min(0.1)
    .max(60)
    .default(5)
    .describe("seconds the DNS proxy waits for the resolver's answer before answering SERVFAIL"),
  tofqdnsProxyMaxInFlight: z
    .number()
    .int()
    .min(1)
    .max(1 << 20)
    .default(4096)
    .describe('queries the DNS proxy forwards at once; past it a query is answered SERVFAIL at once'),
};

const QueryBody = z
  .object({
    endpoint: z.number().int().min(0),
    resolver: z.string().min(1),
    protocol: z.enum(['UDP', 'TCP']).default('UDP'),
    /** The DNS message, base64. */
    query: z.base64().max(87_384),
    /** The endpoint's source port, which its flows show (the redirect knows it). */
    sourcePort: z.number().int().min(1).max(65535).optional(),
  })
  .strict();

/** `10.0.0.10:53`, `[2001:db8::a]:53` or a bare address (port 53). */
function parseResolver(text: string): { address: string; port: number } | undefined {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(text) ?? /^([^:]+):(\d+)$/.exec(text);
  const address = Addr.tryParse(m ? m[1] : text);
  const port = m ? Number(m[2]) : 53;
  if (address === undefined || port < 1 || port > 65535) return undefined;
  return { address: address.toString(), port };
}

/**
 * The flows of one handled query, as Cilium's DNS proxy logs them: the request with the verdict,
 * and the answer the endpoint got unless the query was denied (then the REQUEST is DROPPED) or too
 * broken to have a question.
 */
export function dnsRecords(query: Pick<L7DnsRecord, 'endpoint' | 'sourcePort' | 'resolver' | 'protocol'>, outcome: DnsOutcome, requestNs: string, responseNs: string): L7DnsRecord[] {
  if (outcome.name === undefined || outcome.qtype === undefined) return [];
  const question = { query: presentationName(outcome.name), qtypes: [outcome.qtype] };
  const denied = outcome.verdict === 'denied';
  const request: L7DnsRecord = { ...query, kind: 'REQUEST', timeNs: requestNs, verdict: denied ? 'DROPPED' : 'FORWARDED', dns: { ...question, rcode: 0, ips: [], ttl: 0, cnames: [], rrtypes: [] } };
  if (denied) return [request];
  const answer = outcome.answer ?? { ips: [], ttl: 0, cnames: [], rrtypes: [] };
  return [request, { ...query, kind: 'RESPONSE', timeNs: responseNs, verdict: 'FORWARDED', dns: { ...question, rcode: outcome.rcode, ...answer } }];
}

/** How often the pod DNS listener is tried again when its port was taken. */
const RETRY_LISTEN_MS = 5_000;

/** How often expired names are dropped (and their addresses leave the policy maps). */
const EXPIRY_INTERVAL_MS = 1_000;

export const dnsProxyModule = defineModule({
  name: 'dns-proxy',
  description: 'DNS-based policy: the DNS proxy (rules.dns) and the FQDN cache behind toFQDNs, kept across restarts',
  config: dnsProxyConfig,
  needs: { policy: PolicyCell },
  provides: DnsProxyCell,
  async start({ policy }, { config, log, api }) {
    const file = join(config.stateDir, 'fqdn-cache.json');
    const cache = new FqdnCache({ file, minTtl: config.tofqdnsMinTtl, maxIpsPerName: config.tofqdnsEndpointMaxIpPerHostname });
    try {
      const restored = cache.load();
      if (restored > 0) log.info({ restored, file }, 'FQDN cache restored');
    } catch (error) {
      // A cache that cannot be read costs names until pods ask again, never the agent's start.
      log.warn({ err: error, file }, 'FQDN cache unreadable; starting empty');
    }
    // Before the endpoints module adopts the maps a previous agent left: they keep their names.
    await policy.setFqdnResolver((selector) => cache.addresses(selector));

    let dirty = false;
    const save = () => {
      try {
        cache.save();
        dirty = false;
      } catch (error) {
        log.warn({ err: error, file }, 'saving the FQDN cache failed; will retry');
      }
    };
    const source = new L7RecordFanout<L7DnsRecord>();
    const verdict = (endpoint: number, resolver: Resolver, protocol: 'UDP' | 'TCP'): DnsVerdict => policy.dnsVerdict(endpoint, resolver.address, resolver.port, protocol);
    const learned = async (endpoint: number, addresses: AnswerAddress[]) => {
      dirty = true;
      if (!cache.learn(endpoint, addresses)) return;
      // A new address: kept on disk before the pod hears of it, so a restart keeps it.
      save();
      await policy.fqdnsChanged();
    };
    const settings = {
      minTtl: config.tofqdnsMinTtl,
      rejectResponseCode: config.tofqdnsDnsRejectResponseCode,
      forwardTimeoutMs: config.tofqdnsProxyResponseMaxDelay * 1000,
      maxInFlight: config.tofqdnsProxyMaxInFlight,
    };
    const proxy = new DnsProxy({ ...settings, allows: (endpoint, resolver, protocol, name) => dnsVerdictAllows(verdict(endpoint, resolver, protocol), name), learned });

    let expiring = false;
    const timer = setInterval(() => {
      if (expiring) return;
      expiring = true;
      const expired = cache.expire();
      if (expired || dirty) save();
      (expired ? policy.fqdnsChanged() : Promise.resolve())
        .catch((error: unknown) => log.warn({ err: error }, 'removing expired FQDN addresses from policy failed'))
        .finally(() => (expiring = false));
    }, EXPIRY_INTERVAL_MS).unref();

    /** The flows of a handled query (here, or on the pod DNS redirect's thread). */
    const report = ({ outcome, requestNs, responseNs, ...query }: HandledQuery) => {
      const records = dnsRecords(query, outcome, requestNs, responseNs);
      if (records.length > 0) source.emit(records);
    };
    /** A query judged and answered, with its flows. */
    const answer = async (query: DnsQuery, sourcePort: number): Promise<DnsOutcome> => {
      const requestNs = wallClockNs();
      const outcome = await proxy.handle(query);
      report({ endpoint: query.endpoint, sourcePort, resolver: query.resolver, protocol: query.protocol, outcome, requestNs, responseNs: wallClockNs() });
      return outcome;
    };

    api.route('POST', '/v1/fqdn/query', async ({ body }) => {
      const request = parseRequest(QueryBody, body, 'fqdn query');
      const resolver = parseResolver(request.resolver);
      if (resolver === undefined) throw new RequestError('ERR_BAD_REQUEST', `fqdn query: field resolver: "${request.resolver}" is not a resolver address (ip, ip:port or [ipv6]:port)`);
      const outcome = await answer({ endpoint: request.endpoint, resolver, protocol: request.protocol, payload: Buffer.from(request.query, 'base64') }, request.sourcePort ?? 0);
      const { response, answer: _answer, ...rest } = outcome;
      return { ...rest, ...(response === undefined ? {} : { response: response.toString('base64') }) };
    });
    api.route('GET', '/v1/fqdn/cache', () =>
      cache.list().map((e) => ({ ...e, expiresAt: new Date(e.expiresAt).toISOString(), ttl: Math.max(0, Math.ceil((e.expiresAt - Date.now()) / 1000)) })),
    );

    return {
      value: {
        settings,
        verdict,
        learned,
        report,
        onVerdictInputsChange: (listener: () => void) => policy.onDnsInputsChange(listener),
        onEvict: (listener: () => void) => {
          cache.onEvict = listener;
          return () => (cache.onEvict = undefined);
        },
        onRecords: (listener: (records: L7DnsRecord[]) => void) => source.onRecords(listener),
      },
      stop: () => {
        clearInterval(timer);
        proxy.close();
        if (dirty) save();
      },
      status: () => ({ dnsProxy: { ...proxy.stats, learned: cache.list().length } }),
    };
  },
});

export const dnsRedirectConfig = {
  enableDnsProxyRedirect: z
    .boolean()
    .default(true)
    .describe(`the DNS proxy's listener for pod DNS traffic, UDP and TCP on 127.0.0.1:${DNS_PROXY_PORT}; off: DNS that policy sends to the proxy is dropped`),
  dnsProxyEndpointRateLimit: z
    .number()
    .int()
    .min(0)
    .max(1_000_000)
    .default(2000)
    .describe('DNS queries a second one endpoint may send through the DNS proxy; past it they are dropped unread, so one flooding pod cannot take the agent\'s CPU (0: no limit)'),
  dnsProxyFastPath: z
    .boolean()
    .default(true)
    .describe('pod DNS over UDP through the native fast path: a query the proxy has already judged in the current policy, whose answer holds only addresses already allowed, is answered without JavaScript (off: every query through the proxy\'s JavaScript)'),
  dnsProxyFastPathRealtimeBudget: z
    .number()
    .int()
    .min(0)
    .max(100)
    .default(50)
    .describe('percent of one CPU the DNS fast path\'s thread may use as a realtime (SCHED_FIFO) thread, so pod DNS does not wait behind other work for a CPU; past it the thread is an ordinary one for a second (0: always ordinary)'),
};

/**
 * Pod DNS traffic steered by the datapath to the DNS proxy (ports with DNS rules): the listener,
 * after the endpoints, whose addresses name the senders.
 */
export const dnsRedirectModule = defineModule({
  name: 'dns-redirect',
  description: `pod DNS traffic that policy sends to the DNS proxy, received on 127.0.0.1:${DNS_PROXY_PORT} (UDP and TCP)`,
  config: dnsRedirectConfig,
  needs: { dnsProxy: DnsProxyCell, endpoints: EndpointsCell },
  async start({ dnsProxy, endpoints }, { config, log }) {
    if (!config.enableDnsProxyRedirect) return { value: undefined, status: () => ({ dnsRedirect: { enabled: false } }) };
    await ensureToProxyRouting();
    const listenersPin = attachProxyLookup(config.bpfRoot, log);
    let byAddress = new Map<string, EndpointContext>();
    let revision = -1;
    const endpointAt = (address: string): EndpointContext | undefined => {
      if (endpoints.table.revision !== revision) {
        revision = endpoints.table.revision;
        byAddress = new Map(endpoints.list().flatMap((e) => (e.ipv4 ? [[e.ipv4, { id: e.id, identity: e.identity }] as const] : [])));
      }
      return byAddress.get(address);
    };
    // The agent starts all the same when the port is taken, as with the HTTP proxy: redirected DNS
    // is dropped meanwhile (nobody listening: the datapath finds no socket), the module reports
    // degraded, and the worker tries again until it binds.
    const worker = new DnsRedirectWorker({
      port: DNS_PROXY_PORT,
      ...dnsProxy.settings,
      endpointRateLimit: config.dnsProxyEndpointRateLimit,
      fastPath: config.dnsProxyFastPath,
      fastPathRealtimeBudget: config.dnsProxyFastPathRealtimeBudget,
      proxy4Pin: join(config.bpfRoot, 'maps', MapName.PROXY4),
      ...(listenersPin ? { listenersPin } : {}),
      endpoint: endpointAt,
      verdict: dnsProxy.verdict,
      learned: dnsProxy.learned,
      handled: (queries) => queries.forEach(dnsProxy.report),
      log,
      retryListenMs: RETRY_LISTEN_MS,
    });
    // Before the worker asks anything: whatever it keeps goes stale with the first change.
    const offPolicy = dnsProxy.onVerdictInputsChange(() => worker.invalidate());
    const offEndpoints = endpoints.table.onWrite(() => worker.invalidateTold());
    const offEvict = dnsProxy.onEvict(() => worker.invalidateTold());
    await worker.start();
    return {
      value: undefined,
      stop: async () => {
        offPolicy();
        offEndpoints();
        offEvict();
        await worker.close();
      },
      status: () => ({ dnsRedirect: { enabled: true, port: DNS_PROXY_PORT, listening: worker.listening, restarts: worker.restarts, ...worker.stats() } }),
      health: () => (worker.listening ? { degraded: false } : { degraded: true, reason: `not listening for pod DNS on 127.0.0.1:${DNS_PROXY_PORT}: ${worker.failure ?? 'starting'}` }),
    };
  },
});
