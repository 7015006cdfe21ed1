/**
 * DNS-based policy on a real node: a DNS server in a namespace of its own (the world), a pod whose
 * egress allows `toFQDNs: *.example.com` on 8080 and DNS to that server for some names only. The
 * pod asks its resolver over UDP and TCP; the datapath hands the queries to the agent's DNS proxy:
 * an allowed name is answered and its address is allowed at once (a real connect from the pod), an
 * unlisted name is REFUSED and its address stays denied, the allowed address expires with its TTL,
 * and an agent restart keeps what was learned.
 * @module
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decode, encode } from 'dns-packet';
import { parsePrometheusText, sampleValue } from '../src/metrics/text-format-testing.ts';
import { TestNode, addWorld, cli, dnsQuery, dnsServer, echoServer, inNs, killChild, probeTcp, sleep, spawnInNs, streamConnection, uniqueName, until } from './support/cluster.ts';
import type { DnsRecords } from './support/dns-server.ts';

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: client-fqdn
spec:
  endpointSelector:
    matchLabels: {app: client}
  egress:
  - toCIDR: [198.51.100.2/32]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns:
        - matchName: short.example.com
        - matchPattern: "kept-*.example.com"
  - toFQDNs:
    - matchPattern: "*.example.com"
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
`;

const RECORDS: DnsRecords = {
  'short.example.com': { a: ['198.51.100.10'], ttl: 8 },
  'other.example.com': { a: ['198.51.100.11'], ttl: 300 },
  'kept-1.example.com': { a: ['198.51.100.12'], ttl: 3600 },
  // An answer too big for one datagram on the pod's link (about 1.9 KB).
  'kept-big.example.com': { a: Array.from({ length: 120 }, (_, i) => `203.0.113.${i + 1}`), ttl: 60 },
};

interface QueryAnswer {
  verdict: string;
  rcode: number;
  name?: string;
  response?: string;
  learned: { name: string; ip: string; ttl: number }[];
}

test('toFQDNs through the DNS proxy: pod DNS is redirected to it over UDP and TCP, an allowed name opens its address at once, an unlisted one is refused, TTL expiry closes it, a restart keeps the names', async (t) => {
  const node = await TestNode.start(t);
  const world = await addWorld(t, node, ['198.51.100.2/24', '198.51.100.10/24', '198.51.100.11/24', '198.51.100.12/24']);
  await dnsServer(t, world, '198.51.100.2', RECORDS);
  await echoServer(t, world, 8080);

  const pod = await node.addPod(t, uniqueName('client'), { app: 'client' });
  const result = await node.client.call<{ revision: number }>('POST', '/v1/policies', { yaml: POLICY, file: 'client-fqdn.yaml' });
  assert.ok(result.revision > 0);
  const [short, other, kept] = ['198.51.100.10:8080', '198.51.100.11:8080', '198.51.100.12:8080'];
  assert.deepEqual(await probeTcp(pod.netns, [short, other, kept]), { [short]: false, [other]: false, [kept]: false }, 'no name resolved: nothing allowed');

  // The pod asks its resolver itself: the datapath hands the datagram to the DNS proxy, which
  // answers from the resolver's address and port (the client takes nothing else).
  const allowed = await dnsQuery(pod.netns, '198.51.100.2', 'short.example.com');
  assert.deepEqual([allowed.rcode, allowed.ips], [0, ['198.51.100.10']], JSON.stringify(allowed));
  // A resolver library asks again from the same port (A, then AAAA; a retry): the later datagrams
  // of a tracked flow go to the proxy too.
  for (let i = 0; i < 2; i++) {
    const again = await dnsQuery(pod.netns, '198.51.100.2', 'short.example.com', 'udp', 40100);
    assert.deepEqual([again.rcode, again.ips], [0, ['198.51.100.10']], `query ${i + 1} from port 40100: ${JSON.stringify(again)}`);
  }
  // No sleep: the answer came back only once the pod's policy map allowed the address.
  assert.deepEqual(await probeTcp(pod.netns, [short, other]), { [short]: true, [other]: false }, 'the allowed name\'s address is open as soon as the answer is back');

  const refused = await dnsQuery(pod.netns, '198.51.100.2', 'other.example.com');
  assert.deepEqual([refused.rcode, refused.ips], [5, []], `REFUSED by the proxy, never asked of the resolver (which knows the name): ${JSON.stringify(refused)}`);
  // Asked again (same pod, resolver and name, in the same policy), the native fast path answers,
  // forwarding or refusing with no JavaScript on the way: as soon as nothing the verdict rests on
  // has changed since the proxy decided (learning an address changes the policy once).
  await until('the fast path answers a repeated query', async () => {
    const again = await dnsQuery(pod.netns, '198.51.100.2', 'short.example.com');
    assert.deepEqual([again.rcode, again.ips], [0, ['198.51.100.10']]);
    return ((await node.client.get<{ dnsRedirect?: { fastForwarded: number } }>('/v1/status')).dnsRedirect?.fastForwarded ?? 0) > 0;
  });
  await until('the fast path refuses a repeated query', async () => {
    const again = await dnsQuery(pod.netns, '198.51.100.2', 'other.example.com');
    assert.deepEqual([again.rcode, again.ips], [5, []]);
    return ((await node.client.get<{ dnsRedirect?: { fastDenied: number } }>('/v1/status')).dnsRedirect?.fastDenied ?? 0) > 0;
  });
  assert.deepEqual(await probeTcp(pod.netns, [short, other]), { [short]: true, [other]: false }, 'what the fast path answered changed nothing the policy allows');
  assert.deepEqual(await probeTcp(pod.netns, [other]), { [other]: false }, 'the unlisted name\'s address stays closed');
  const refusedTcp = await dnsQuery(pod.netns, '198.51.100.2', 'other.example.com', 'tcp');
  assert.deepEqual([refusedTcp.rcode, refusedTcp.ips], [5, []], `over TCP too: ${JSON.stringify(refusedTcp)}`);

  // Over TCP (what a resolver library falls back to for big answers), to the same proxy.
  const keptAnswer = await dnsQuery(pod.netns, '198.51.100.2', 'kept-1.example.com', 'tcp');
  assert.deepEqual([keptAnswer.rcode, keptAnswer.ips], [0, ['198.51.100.12']], JSON.stringify(keptAnswer));
  assert.deepEqual(await probeTcp(pod.netns, [kept]), { [kept]: true });

  // The API asks on an endpoint's behalf, through the same proxy.
  const viaApi = await node.client.call<QueryAnswer>('POST', '/v1/fqdn/query', {
    endpoint: pod.endpoint.id,
    resolver: '198.51.100.2:53',
    query: encode({ type: 'query', id: 7, flags: 1 << 8, questions: [{ type: 'A', name: 'other.example.com' }] }).toString('base64'),
  });
  assert.deepEqual([viaApi.verdict, viaApi.rcode, decode(Buffer.from(viaApi.response!, 'base64')).id], ['denied', 5, 7]);

  const { dnsRedirect: redirect } = await node.client.get<{ dnsRedirect?: { datagrams: number; connections: number } }>('/v1/status');
  assert.ok(redirect && redirect.datagrams >= 2 && redirect.connections >= 2, JSON.stringify(redirect));

  const cache = await node.client.get<{ endpoint: number; name: string; ip: string; ttl: number }[]>('/v1/fqdn/cache');
  assert.deepEqual(cache.map((e) => [e.endpoint, e.name, e.ip]), [
    [pod.endpoint.id, 'kept-1.example.com', '198.51.100.12'],
    [pod.endpoint.id, 'short.example.com', '198.51.100.10'],
  ]);
  const listed = await cli(node, 'fqdn', 'cache', 'list', '--name', 'KEPT-1.example.com.');
  assert.equal(listed.code, 0, listed.stderr);
  assert.match(listed.stdout, new RegExp(String.raw`^ENDPOINT +NAME +IP +TTL +EXPIRES\n${pod.endpoint.id} +kept-1\.example\.com +198\.51\.100\.12 +\d+s +\d{4}-`));

  // A restart (kill -9) keeps the learned names, and the connections they allowed.
  const stream = streamConnection(t, pod.netns, '198.51.100.12', 8080);
  while (stream.received() === 0 && stream.alive()) await sleep(50);
  await node.stopAgent('SIGKILL');
  await node.startAgent();
  const before = stream.received();
  await sleep(1000);
  assert.ok(stream.alive() && stream.received() > before, `the established connection lives on across the restart (${before} → ${stream.received()} bytes)`);
  const afterRestart = await node.client.get<{ name: string }[]>('/v1/fqdn/cache');
  assert.ok(afterRestart.some((e) => e.name === 'kept-1.example.com'), JSON.stringify(afterRestart));
  assert.deepEqual(await probeTcp(pod.netns, [kept]), { [kept]: true }, 'still allowed after the restart');

  // short.example.com's TTL is 8 s: then its address leaves the policy map.
  const deadline = Date.now() + 20_000;
  let open = true;
  while (open && Date.now() < deadline) {
    await sleep(500);
    open = (await probeTcp(pod.netns, [short], 500))[short];
  }
  assert.equal(open, false, 'the address expired with its TTL');
  assert.deepEqual(await probeTcp(pod.netns, [kept]), { [kept]: true }, 'the long-lived name stays');
  const finalCache = await node.client.get<{ name: string }[]>('/v1/fqdn/cache');
  assert.deepEqual(finalCache.map((e) => e.name), ['kept-1.example.com']);
  // Too big for a datagram to the pod on a 1500-byte link (this node's pods get the underlay's
  // larger MTU): header and question with TC, and the full answer over TCP.
  await inNs(node.netns, 'ip', ['link', 'set', 'dev', pod.endpoint.hostIfname, 'mtu', '1500']);
  const big = await dnsQuery(pod.netns, '198.51.100.2', 'kept-big.example.com');
  assert.deepEqual([big.rcode, big.truncated, big.ips], [0, true, []], JSON.stringify(big));
  const bigTcp = await dnsQuery(pod.netns, '198.51.100.2', 'kept-big.example.com', 'tcp');
  assert.equal(bigTcp.ips?.length, 120, JSON.stringify(bigTcp).slice(0, 200));
});

const HUBBLE_METRICS = '127.0.0.1:19966';
const FETCH = `fetch(process.argv[1]).then(async (r) => process.stdout.write(await r.text()))`;

/** A DNS flow as `ciliate observe -o json` prints it (Hubble's JSON names). */
interface DnsFlow {
  verdict: string;
  Type: string;
  traffic_direction: string;
  drop_reason_desc?: string;
  IP: { source: string; destination: string; ipVersion: string };
  l4: { UDP?: { source_port: number; destination_port: number } };
  source: { pod_name?: string; identity: number };
  destination: { pod_name?: string; identity: number; labels?: string[] };
  is_reply?: boolean;
  l7: { type: string; dns: { query: string; ips?: string[]; ttl?: number; cnames?: string[]; observation_source: string; rcode?: number; qtypes: string[]; rrtypes?: string[] } };
}

test('each query the DNS proxy handles is a Hubble DNS flow pair (dropped when refused), shown by observe --protocol dns and counted by the dns metric', async (t) => {
  const node = await TestNode.start(t, { extraArgs: ['--hubble-metrics-server', HUBBLE_METRICS, '--hubble-metrics', 'dns'] });
  const world = await addWorld(t, node, ['198.51.100.2/24']);
  await dnsServer(t, world, '198.51.100.2', { ...RECORDS, 'alias.kept-2.example.com': { cname: 'kept-1.example.com', ttl: 60 } });
  const pod = await node.addPod(t, uniqueName('client'), { app: 'client' });
  await node.client.call('POST', '/v1/policies', { yaml: POLICY.replace('- matchName: short.example.com', '- matchName: short.example.com\n        - matchName: alias.kept-2.example.com'), file: 'client-fqdn.yaml' });
  // From the pod, each from a port of its own, through the datapath's redirect.
  assert.equal((await dnsQuery(pod.netns, '198.51.100.2', 'short.example.com', 'udp', 40001)).rcode, 0);
  assert.equal((await dnsQuery(pod.netns, '198.51.100.2', 'alias.kept-2.example.com', 'udp', 40002)).rcode, 0);
  assert.equal((await dnsQuery(pod.netns, '198.51.100.2', 'other.example.com', 'udp', 40003)).rcode, 5);
  const json = await cli(node, 'observe', '--last', '1000', '--protocol', 'dns', '-o', 'json');
  assert.equal(json.code, 0, json.stderr);
  const flows = json.stdout.trim().split('\n').map((l) => (JSON.parse(l) as { flow: DnsFlow }).flow);
  assert.deepEqual(flows.map((f) => [f.l7.type, f.verdict, f.l7.dns.query]), [
    ['REQUEST', 'FORWARDED', 'short.example.com.'],
    ['RESPONSE', 'FORWARDED', 'short.example.com.'],
    ['REQUEST', 'FORWARDED', 'alias.kept-2.example.com.'],
    ['RESPONSE', 'FORWARDED', 'alias.kept-2.example.com.'],
    ['REQUEST', 'DROPPED', 'other.example.com.'],
  ]);
  const [request, response, , cnamed, dropped] = flows;

  // Asked again until the native fast path answers (and refuses) them: its flows are the same.
  const fastFlows = async (name: string, rcode: number, counter: 'fastForwarded' | 'fastDenied', port: number): Promise<DnsFlow[]> => {
    for (let i = 0; ; i++) {
      const before = (await node.client.get<{ dnsRedirect?: Record<string, number> }>('/v1/status')).dnsRedirect?.[counter] ?? 0;
      assert.equal((await dnsQuery(pod.netns, '198.51.100.2', name, 'udp', port + i)).rcode, rcode);
      if (((await node.client.get<{ dnsRedirect?: Record<string, number> }>('/v1/status')).dnsRedirect?.[counter] ?? 0) === before) {
        assert.ok(i < 20, `the fast path never took ${name}`);
        continue;
      }
      let mine: DnsFlow[] = [];
      await until(`the fast path's flows of ${name} (drained every 50 ms)`, async () => {
        const out = await cli(node, 'observe', '--last', '1000', '--protocol', 'dns', '-o', 'json');
        mine = out.stdout.trim().split('\n').map((l) => (JSON.parse(l) as { flow: DnsFlow }).flow).filter((f) => f.l4.UDP?.source_port === port + i || f.l4.UDP?.destination_port === port + i);
        return mine.length === (rcode === 0 ? 2 : 1);
      });
      return mine;
    }
  };
  const withoutPortAndTime = (f: DnsFlow) => ({ ...f, time: undefined, uuid: undefined, Summary: undefined, l4: undefined });
  const [fastRequest, fastResponse] = await fastFlows('short.example.com', 0, 'fastForwarded', 41000);
  assert.deepEqual(withoutPortAndTime(fastRequest), withoutPortAndTime(request));
  assert.deepEqual(withoutPortAndTime(fastResponse), withoutPortAndTime(response));
  const [fastDropped] = await fastFlows('other.example.com', 5, 'fastDenied', 42000);
  assert.deepEqual(withoutPortAndTime(fastDropped), withoutPortAndTime(dropped));
  const flowCount = async (query: string) => ((await cli(node, 'observe', '--last', '1000', '--protocol', 'dns', '-o', 'json')).stdout.match(new RegExp(`"query":"${query.replaceAll('.', '\\.')}"`, 'g')) ?? []).length;
  const shortQueries = (await flowCount('short.example.com.')) / 2;
  const otherQueries = await flowCount('other.example.com.');
  const podName = pod.endpoint.podName ?? pod.endpoint.containerId;
  assert.deepEqual(
    [request.Type, request.traffic_direction, request.IP, request.l4, request.source.pod_name, request.source.identity, request.destination.identity, request.destination.labels, request.is_reply],
    ['L7', 'EGRESS', { source: pod.endpoint.ipv4, destination: '198.51.100.2', ipVersion: 'IPv4' }, { UDP: { source_port: 40001, destination_port: 53 } }, podName, pod.endpoint.identity, 2, ['reserved:world'], false],
  );
  assert.deepEqual(request.l7.dns, { query: 'short.example.com.', ttl: 0, observation_source: 'proxy', rcode: 0, qtypes: ['A'] });
  assert.deepEqual(
    [response.IP, response.l4, response.destination.pod_name, response.is_reply],
    [{ source: '198.51.100.2', destination: pod.endpoint.ipv4, ipVersion: 'IPv4' }, { UDP: { source_port: 53, destination_port: 40001 } }, podName, true],
    'an answer goes from the resolver to the pod',
  );
  assert.deepEqual(response.l7.dns, { query: 'short.example.com.', ips: ['198.51.100.10'], ttl: 8, observation_source: 'proxy', rcode: 0, qtypes: ['A'], rrtypes: ['A'] });
  assert.deepEqual(cnamed.l7.dns, { query: 'alias.kept-2.example.com.', ips: ['198.51.100.12'], ttl: 60, cnames: ['kept-1.example.com.'], observation_source: 'proxy', rcode: 0, qtypes: ['A'], rrtypes: ['CNAME', 'A'] });
  assert.equal(dropped.drop_reason_desc, 'POLICY_DENIED');
  assert.deepEqual([dropped.l7.dns.query, dropped.l7.dns.qtypes], ['other.example.com.', ['A']]);

  const compact = await cli(node, 'observe', '--last', '1000', '--protocol', 'dns');
  assert.equal(compact.code, 0, compact.stderr);
  const client = `default/${podName}`.replaceAll('.', '\\.');
  assert.match(compact.stdout, new RegExp(String.raw`${client}:40001 \(ID:\d+\) -> 198\.51\.100\.2:53 \(world\) dns-request FORWARDED \(DNS Query short\.example\.com\. A\)`));
  // A reply is printed from the client's side, as hubble prints it.
  assert.match(compact.stdout, new RegExp(String.raw`${client}:40001 \(ID:\d+\) <- 198\.51\.100\.2:53 \(world\) dns-response FORWARDED \(DNS Answer "198\.51\.100\.10" TTL: 8 \(Proxy short\.example\.com\. A\)\)`));
  assert.match(compact.stdout, /dns-response FORWARDED \(DNS Answer "198\.51\.100\.12" TTL: 60 \(Proxy alias\.kept-2\.example\.com\. A\)\)/);
  assert.match(compact.stdout, new RegExp(String.raw`${client}:40003 \(ID:\d+\) -> 198\.51\.100\.2:53 \(world\) dns-request DROPPED \(DNS Query other\.example\.com\. A\)`));
  const http = await cli(node, 'observe', '--last', '1000', '--protocol', 'http');
  assert.doesNotMatch(http.stdout, /dns-/, 'DNS flows are not HTTP flows');

  const metrics = parsePrometheusText(await inNs(node.netns, process.execPath, ['-e', FETCH, `http://${HUBBLE_METRICS}/metrics`]));
  assert.equal(sampleValue(metrics, 'hubble_dns_queries_total', { rcode: '', qtypes: 'A', ips_returned: '' }), shortQueries + otherQueries + 1);
  assert.equal(sampleValue(metrics, 'hubble_dns_responses_total', { rcode: 'No Error', qtypes: 'A', ips_returned: '1' }), shortQueries + 1);
  assert.equal(sampleValue(metrics, 'hubble_dns_response_types_total', { type: 'CNAME', qtypes: 'A' }), 1);
  assert.equal(sampleValue(metrics, 'hubble_dns_response_types_total', { type: 'A', qtypes: 'A' }), shortQueries + 1);
});

test('DNS to a ClusterIP (a kube-dns service in front of a resolver pod that takes DNS from clients only) goes through the DNS proxy: the forward is judged as the client\'s, the answer comes back from the ClusterIP, refused names are refused, toFQDNs opens what was answered', async (t) => {
  const node = await TestNode.start(t);
  const world = await addWorld(t, node, ['198.51.100.10/24']);
  await echoServer(t, world, 8080);
  const resolver = await node.addPod(t, uniqueName('coredns'), { 'k8s-app': 'kube-dns' });
  await dnsServer(t, resolver.netns, '0.0.0.0', RECORDS);
  const added = await cli(node, 'service', 'add', 'kube-dns', '--selector', 'k8s-app=kube-dns', '--port', 'dns=53:53/UDP', '--port', 'dns-tcp=53:53/TCP', '-o', 'json');
  assert.equal(added.code, 0, added.stderr);
  const clusterIp = (JSON.parse(added.stdout) as { clusterIP: string }).clusterIP;
  const pod = await node.addPod(t, uniqueName('client'), { app: 'client' });
  // DNS to kube-dns for the names `dns` lists, and 8080 to what short.example.com resolves to.
  const clientPolicy = (dns: string) =>
    node.client.call('POST', '/v1/policies', {
      file: 'kube-dns.yaml',
      yaml: `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-dns}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {k8s-app: kube-dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [${dns}]
  - toFQDNs: [{matchName: short.example.com}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`,
    });
  await clientPolicy('{matchPattern: "*.example.com"}');
  // The resolver takes DNS from the clients only (not from the node): the proxy's forwards carry
  // the client's identity, as the query the datapath redirected had.
  await node.client.call('POST', '/v1/policies', {
    file: 'kube-dns-ingress.yaml',
    yaml: `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kube-dns-ingress}
spec:
  endpointSelector: {matchLabels: {k8s-app: kube-dns}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "53", protocol: ANY}]}]
`,
  });
  const target = '198.51.100.10:8080';
  assert.deepEqual(await probeTcp(pod.netns, [target]), { [target]: false });
  // From a connected socket, as glibc asks: an answer from the backend's address would be dropped.
  await until('the service has its backend', async () => (await dnsQuery(pod.netns, clusterIp, 'short.example.com')).rcode === 0);
  const answer = await dnsQuery(pod.netns, clusterIp, 'short.example.com');
  assert.deepEqual([answer.rcode, answer.ips], [0, ['198.51.100.10']], JSON.stringify(answer));
  const overTcp = await dnsQuery(pod.netns, clusterIp, 'kept-1.example.com', 'tcp');
  assert.deepEqual([overTcp.rcode, overTcp.ips], [0, ['198.51.100.12']], JSON.stringify(overTcp));
  const refused = await dnsQuery(pod.netns, clusterIp, 'evil.example.org');
  assert.equal(refused.rcode, 5, JSON.stringify(refused));
  assert.deepEqual(await probeTcp(pod.netns, [target]), { [target]: true }, 'the answered address is open');
  const flows = await cli(node, 'observe', '--last', '100', '--protocol', 'dns');
  assert.match(flows.stdout, /dns-request DROPPED \(DNS Query evil\.example\.org\. A\)/);

  // The DNS rules narrowed: the next query of a name they no longer list is refused at once.
  await clientPolicy('{matchName: short.example.com}');
  const narrowed = await dnsQuery(pod.netns, clusterIp, 'kept-1.example.com');
  assert.equal(narrowed.rcode, 5, `REFUSED once the rules no longer list it: ${JSON.stringify(narrowed)}`);
  assert.equal((await dnsQuery(pod.netns, clusterIp, 'short.example.com')).rcode, 0);
});

test('the DNS listener\'s port taken: the agent starts degraded, naming it, and listens once the port is free', async (t) => {
  const node = await TestNode.start(t);
  await node.stopAgent('SIGTERM');
  const holder = spawnInNs(node.netns, process.execPath, ['-e', "require('dgram').createSocket('udp4').bind(10053, '127.0.0.1', () => console.log('held'))"]);
  t.after(() => killChild(holder));
  await new Promise((resolve) => holder.stdout?.once('data', resolve));
  await node.startAgent();
  const status = await node.client.get<{ state: string; dnsRedirect?: { listening: boolean } }>('/v1/status');
  assert.deepEqual([status.state, status.dnsRedirect?.listening], ['degraded', false]);
  const health = await cli(node, 'status');
  assert.match(health.stdout, /not listening for pod DNS on 127\.0\.0\.1:10053: bind EADDRINUSE/);
  await killChild(holder);
  await until('the listener binds once the port is free', async () => (await node.client.get<{ dnsRedirect?: { listening: boolean } }>('/v1/status')).dnsRedirect?.listening === true, 15_000);
});
