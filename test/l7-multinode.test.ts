/**
 * HTTP rules when the client and the server are on different nodes. The node proxy's connection
 * upstream leaves through its node's stack; in tunnel mode it carries the client's identity in the
 * VNI (bpf_overlay.c cil_to_overlay), so the server's node judges the client, not the proxy's
 * node. In native mode there is no tunnel key: the server's node sees the proxy's node and
 * judges it as such (remote-node), refusing what only the client was allowed.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { proxyIngressMark } from '../src/proxy/index.ts';
import { TestNode, Underlay, connectMarked, dnsQuery, dnsServer, httpRequest, httpServer, type AgentOptions } from './support/cluster.ts';
import { enforce, eventually, flows } from './support/flows.ts';

/**
 * The client's egress: GET /public on the web pods' port 80 and DNS for *.example.com from the
 * resolver pods, nothing else. The web and resolver pods admit the client's labels only, at L3/L4.
 */
const POLICIES = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-egress-http}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: /public}]
  - toEndpoints: [{matchLabels: {app: resolver}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*.example.com"}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: resolver-from-client}
spec:
  endpointSelector: {matchLabels: {app: resolver}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "53", protocol: ANY}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-from-client}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
`;

/** The api pods' ingress: the caller may GET /public on port 80 (judged by the api pod's node proxy). */
const API_INGRESS_HTTP = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api-ingress-http}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: caller}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: /public}]
`;

async function twoNodes(t: TestContext, routingMode: 'tunnel' | 'native'): Promise<[TestNode, TestNode]> {
  const underlay = await Underlay.create(t);
  const etcd = await underlay.startEtcd(t);
  const options = (nodeName: string, nodeIp: string): AgentOptions => ({ nodeName, nodeIp, underlay, etcd, routingMode });
  return [await TestNode.start(t, options('n1', '192.168.100.1')), await TestNode.start(t, options('n2', '192.168.100.2'))];
}

test('tunnel mode: egress HTTP (and DNS) to a pod of another node carries the client\'s identity to that node, whose ingress policy admits the client; ingress HTTP rules judge a client of another node', async (t) => {
  const [n1, n2] = await twoNodes(t, 'tunnel');
  const client = await n1.addPod(t, 'client', { app: 'client' });
  const intruder = await n1.addPod(t, 'intruder', { app: 'intruder' });
  const web = await n2.addPod(t, 'web', { app: 'web' });
  await httpServer(t, web.netns, 80, { 'GET /public': 'web public', 'GET /private': 'web private', 'GET /shared': 'web shared' });
  const resolver = await n2.addPod(t, 'resolver', { app: 'resolver' });
  await dnsServer(t, resolver.netns, '0.0.0.0', { 'web.example.com': { a: ['198.51.100.80'], ttl: 30 }, 'web.example.org': { a: ['198.51.100.81'], ttl: 30 } });
  await enforce(n1, 'l7-multinode.yaml', POLICIES);
  const base = `http://${web.endpoint.ipv4}`;

  const allowed = await httpRequest(client.netns, 'GET', `${base}/public`, 4000);
  assert.deepEqual(allowed, { status: 200, body: 'web public\n' }, 'the proxy\'s connection passes the web pod\'s ingress policy as the client');
  assert.deepEqual(await httpRequest(client.netns, 'GET', `${base}/private`, 4000), { status: 403, body: 'Access denied\r\n' }, 'a path no egress rule allows');

  // The web pod's node judged the client: its identity on the forwarded connection to port 80,
  // and no drop of the node's own identity (remote-node) there.
  const toWeb = ['--to-ip', web.endpoint.ipv4, '--to-port', '80'];
  const seen = await eventually(n2, toWeb, (f) => f.some((x) => x.verdict === 'FORWARDED' && x.source?.identity === client.endpoint.identity));
  assert.ok(
    seen.some((f) => f.verdict === 'FORWARDED' && f.source?.identity === client.endpoint.identity),
    `n2 forwards to the web pod with the client's identity ${client.endpoint.identity}: ${JSON.stringify(seen.map((f) => [f.verdict, f.source?.identity, f.drop_reason_desc]))}`,
  );
  assert.deepEqual(seen.filter((f) => f.verdict === 'DROPPED'), [], 'nothing to the web pod dropped');
  const verdicts = await flows(n2, ...toWeb, '--type', 'policy-verdict');
  assert.ok(verdicts.some((f) => f.source?.identity === client.endpoint.identity && f.verdict === 'FORWARDED'), `the policy verdict names the client: ${JSON.stringify(verdicts)}`);

  // The DNS proxy's forwards carry the client's identity the same way: the resolver pod of node 2,
  // which takes DNS from the client only, answers them.
  const answer = await dnsQuery(client.netns, resolver.endpoint.ipv4, 'web.example.com');
  assert.deepEqual([answer.rcode, answer.ips], [0, ['198.51.100.80']], JSON.stringify(answer));
  assert.equal((await dnsQuery(client.netns, resolver.endpoint.ipv4, 'web.example.org')).rcode, 5, 'a name no DNS rule allows is refused by the proxy');

  // A pod of node 1 that forges the proxy's mark with the client's identity gains nothing: the mark
  // does not survive the crossing into the node, and node 2 judges the intruder's own identity.
  const forged = await connectMarked(intruder.netns, proxyIngressMark(client.endpoint.identity), web.endpoint.ipv4);
  assert.equal(forged, 'timeout', 'the intruder with the proxy mark is dropped');
  const dropped = await eventually(n2, [...toWeb, '--verdict', 'DROPPED'], (f) => f.some((x) => x.source?.identity === intruder.endpoint.identity));
  assert.ok(dropped.some((f) => f.source?.identity === intruder.endpoint.identity), 'dropped as the intruder');
  assert.ok(dropped.every((f) => f.source?.identity !== client.endpoint.identity), 'never as the client');

  // The other way: ingress HTTP rules on a pod of node 2, its client on node 1 (through the tunnel
  // to node 2's proxy, which knows the client's identity).
  const caller = await n1.addPod(t, 'caller', { app: 'caller' });
  const api = await n2.addPod(t, 'api', { app: 'api' });
  await httpServer(t, api.netns, 80, { 'GET /public': 'api public', 'GET /private': 'api private' });
  await enforce(n1, 'api-ingress-http.yaml', API_INGRESS_HTTP);
  const apiBase = `http://${api.endpoint.ipv4}`;
  assert.deepEqual(await httpRequest(caller.netns, 'GET', `${apiBase}/public`, 4000), { status: 200, body: 'api public\n' });
  assert.deepEqual(await httpRequest(caller.netns, 'GET', `${apiBase}/private`, 4000), { status: 403, body: 'Access denied\r\n' });
  const l7 = await eventually(n2, ['--protocol', 'http', '--to-ip', api.endpoint.ipv4], (f) => f.filter((x) => x.l7?.type === 'REQUEST').length >= 2);
  const requests = l7.filter((f) => f.l7?.type === 'REQUEST').map((f) => [f.verdict, f.l7?.http?.url, f.source?.identity]);
  assert.deepEqual(requests, [
    ['FORWARDED', `${apiBase}/public`, caller.endpoint.identity],
    ['DROPPED', `${apiBase}/private`, caller.endpoint.identity],
  ]);

  // Both at once: the client's egress HTTP rules (node 1's proxy) and the web pod's own ingress
  // HTTP rules (node 2's proxy, which knows the client by the identity the tunnel brought, as the
  // datapath noted it for the connection: its address is node 1's proxy's).
  await enforce(n1, 'l7-multinode.yaml', POLICIES.replace('http: [{method: GET, path: /public}]', 'http: [{method: GET, path: /public}, {method: GET, path: /shared}]').replace(
    `  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
`,
    `  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: /public}]
`,
  ));
  assert.deepEqual(await httpRequest(client.netns, 'GET', `${base}/public`, 4000), { status: 200, body: 'web public\n' }, 'allowed by both sides');
  assert.deepEqual(await httpRequest(client.netns, 'GET', `${base}/shared`, 4000), { status: 403, body: 'Access denied\r\n' }, "allowed by the client's egress, denied by the web pod's ingress");
  const both = await eventually(n2, ['--protocol', 'http', '--to-ip', web.endpoint.ipv4], (f) => f.some((x) => x.l7?.http?.url === `${base}/shared`));
  assert.deepEqual(
    both.filter((f) => f.l7?.type === 'REQUEST').map((f) => [f.verdict, f.l7?.http?.url, f.source?.identity]),
    [['FORWARDED', `${base}/public`, client.endpoint.identity], ['DROPPED', `${base}/shared`, client.endpoint.identity]],
    'node 2 judged the client',
  );
});

test('native mode: the proxy\'s connection to a pod of another node is judged as the proxy\'s node (no tunnel key), so an ingress policy that admits only the client refuses it', async (t) => {
  const [n1, n2] = await twoNodes(t, 'native');
  const client = await n1.addPod(t, 'client', { app: 'client' });
  const web = await n2.addPod(t, 'web', { app: 'web' });
  await httpServer(t, web.netns, 80, { 'GET /public': 'web public', 'GET /private': 'web private' });
  await enforce(n1, 'l7-multinode.yaml', POLICIES);
  const base = `http://${web.endpoint.ipv4}`;

  // The proxy gives up connecting upstream after 10 s and answers 503.
  const refused = await httpRequest(client.netns, 'GET', `${base}/public`, 15_000);
  assert.deepEqual([refused.status, refused.body], [503, 'upstream connect error\r\n'], JSON.stringify(refused));
  assert.deepEqual(await httpRequest(client.netns, 'GET', `${base}/private`, 4000), { status: 403, body: 'Access denied\r\n' }, 'the egress rules still judge');
  const dropped = await eventually(n2, ['--to-ip', web.endpoint.ipv4, '--to-port', '80', '--verdict', 'DROPPED'], (f) => f.length > 0);
  assert.ok(dropped.length > 0, 'n2 drops the proxy\'s connection');
  assert.ok(dropped.every((f) => f.source?.identity === 6 && f.IP?.source === '192.168.100.1'), `as remote-node, from n1's address: ${JSON.stringify(dropped.map((f) => [f.source?.identity, f.IP?.source]))}`);
});
