/**
 * DNS-based policy on a node: the DNS proxy that checks an endpoint's queries against its DNS
 * rules and forwards the allowed ones to the resolver they were sent to, and the FQDN cache of
 * the addresses the answers held, which `toFQDNs` selectors select (src/policy expands them into
 * CIDR peers; the agent's dns-proxy module wires the two).
 *
 * Pod DNS traffic reaches the proxy through the datapath's redirect (bpf/lib/proxy.h) and the
 * `DnsRedirectListener`; `DnsProxy.handle()` judges and answers one query.
 *
 * @example
 * const cache = new FqdnCache({ file: '/var/lib/ciliate/fqdn-cache.json', minTtl: 0 });
 * const proxy = new DnsProxy({ allows: () => true, learned: (ep, addrs) => void cache.learn(ep, addrs) });
 * const { response } = await proxy.handle({ endpoint: 7, resolver: { address: '10.96.0.10', port: 53 }, protocol: 'UDP', payload });
 * @module
 */
export { FqdnCache, DEFAULT_MAX_IPS_PER_NAME, DEFAULT_MIN_TTL, type AnswerAddress, type FqdnCacheOptions, type LearnedAddress } from './cache.ts';
export { DnsProxy, RCODE, answerAddresses, answerDetails, presentationName, type AnswerDetails, type DnsOutcome, type DnsProxyOptions, type DnsQuery, type RejectResponseCode, type Resolver } from './proxy.ts';
export { DnsRedirectListener, MAX_TCP_CONNECTIONS_PER_ENDPOINT, type DnsRedirectOptions, type DnsRedirectStats } from './redirect.ts';
export { DnsRedirectWorker, type DnsRedirectWorkerOptions } from './redirect-host.ts';
export { REDIRECT_COUNTERS, wallClockNs, type EndpointContext, type HandledQuery, type RedirectCounter } from './redirect-protocol.ts';
