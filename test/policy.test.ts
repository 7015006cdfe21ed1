import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { TestNode, Underlay, echoServer, httpRequest, httpServer, probeTcp, cli, type AgentOptions } from './support/cluster.ts';

const POLICIES = join(import.meta.dirname, 'policies');

async function starWars(t: Parameters<typeof TestNode.start>[0], nodes: TestNode[]) {
  const [first, second] = [nodes[0], nodes.at(-1)!];
  const deathstar = await first.addPod(t, 'deathstar', { org: 'empire', class: 'deathstar' });
  const tiefighter = await second.addPod(t, 'tiefighter', { org: 'empire', class: 'tiefighter' });
  const xwing = await second.addPod(t, 'xwing', { org: 'alliance', class: 'xwing' });
  // As in Cilium's getting-started guide: the Death Star serves HTTP on 80 (81 stays a TCP echo).
  await httpServer(t, deathstar.netns, 80, { 'POST /v1/request-landing': 'Ship landed' });
  await echoServer(t, deathstar.netns, 81);
  const ds = deathstar.endpoint.ipv4;
  return { deathstar, tiefighter, xwing, port80: `${ds}:80`, port81: `${ds}:81`, landing: `http://${ds}/v1/request-landing` };
}

test("Star Wars: rule1 lets only the Empire reach the Death Star on 80/TCP; trace explains it; a bad policy changes nothing", async (t) => {
  const node = await TestNode.start(t);
  const { deathstar, tiefighter, xwing, port80, port81, landing } = await starWars(t, [node]);
  assert.deepEqual(await probeTcp(xwing.netns, [port80, port81]), { [port80]: true, [port81]: true }, 'no policy: everyone lands');
  assert.deepEqual(await httpRequest(xwing.netns, 'POST', landing), { status: 200, body: 'Ship landed\n' }, 'no policy: the xwing lands too');

  const imported = await cli(node, 'policy', 'import', join(POLICIES, 'starwars-rule1.yaml'));
  assert.equal(imported.code, 0, imported.stderr);
  const revision = /revision: (\d+)/.exec(imported.stdout)?.[1];
  assert.ok(revision, imported.stdout);
  const waited = await cli(node, 'policy', 'wait', revision);
  assert.equal(waited.code, 0, waited.stderr);
  assert.match(waited.stdout, new RegExp(`^revision ${revision} enforced on every node: n1 \\(at \\d+\\)\n$`), 'one node, its embedded store: the cluster is this node');
  const local = await cli(node, 'policy', 'wait', revision, '--local');
  assert.match(local.stdout, new RegExp(`^revision ${revision} enforced on this node`), local.stderr);
  const got = JSON.parse((await cli(node, 'endpoint', 'get', String(deathstar.endpoint.id), '-o', 'json')).stdout) as { policyRevision?: number };
  assert.ok(got.policyRevision !== undefined && got.policyRevision >= Number(revision), `the deathstar enforces ${got.policyRevision}, want ≥ ${revision}`);

  assert.deepEqual(await probeTcp(tiefighter.netns, [port80, port81]), { [port80]: true, [port81]: false }, 'tiefighter: 80 only');
  assert.deepEqual(await probeTcp(xwing.netns, [port80, port81]), { [port80]: false, [port81]: false }, 'xwing: nothing');
  assert.deepEqual(await httpRequest(tiefighter.netns, 'POST', landing), { status: 200, body: 'Ship landed\n' }, 'the tiefighter lands');
  assert.deepEqual(await httpRequest(xwing.netns, 'POST', landing), { error: 'timeout' }, 'the xwing\'s request times out');

  // Every decision is an event; a verdict names the rule that decided it.
  const events = (await cli(node, 'monitor', '--last', '500', '-o', 'json')).stdout.trim().split('\n').map((l) => JSON.parse(l) as { kind: string; summary: string; rule?: string; dropReason?: string; srcIdentity: number; event: { allowed?: boolean; directionName?: string } });
  const verdicts = events.filter((e) => e.kind === 'policy-verdict' && e.event.directionName === 'ingress');
  assert.ok(verdicts.some((e) => e.event.allowed && e.rule === 'CiliumNetworkPolicy/default/rule1' && e.srcIdentity === tiefighter.endpoint.identity), 'an allowed verdict names rule1');
  assert.ok(verdicts.some((e) => !e.event.allowed && e.srcIdentity === xwing.endpoint.identity), 'a denied verdict for the xwing');
  assert.ok(events.some((e) => e.kind === 'drop' && e.dropReason === 'POLICY_DENIED'), 'the denied packets are dropped as POLICY_DENIED');
  assert.match(verdicts.find((e) => e.rule)!.summary, /policy-verdict:L3-L4 INGRESS ALLOWED \(TCP\) \[CiliumNetworkPolicy\/default\/rule1\]/);

  const allowed = await cli(node, 'policy', 'trace', '--src', 'org=empire,class=tiefighter', '--dst', 'org=empire,class=deathstar', '--dport', '80/TCP');
  assert.equal(allowed.code, 0, allowed.stdout + allowed.stderr);
  assert.match(allowed.stdout, /verdict: ALLOWED/);
  assert.match(allowed.stdout, /rules: +CiliumNetworkPolicy\/default\/rule1/);
  const denied = await cli(node, 'policy', 'trace', '--src', String(xwing.endpoint.id), '--dst', 'org=empire,class=deathstar', '--dport', '80/TCP');
  assert.equal(denied.code, 1);
  assert.match(denied.stdout, /verdict: DENIED \(decided at ingress\)/);
  assert.match(denied.stdout, /denied by default/);

  const listed = await cli(node, 'policy', 'list', '-o', 'json');
  assert.deepEqual((JSON.parse(listed.stdout) as { key: string }[]).map((r) => r.key), ['CiliumNetworkPolicy/default/rule1']);

  const bad = await cli(node, 'policy', 'import', join(POLICIES, 'starwars-kafka.yaml'));
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /starwars-kafka\.yaml: document 2 \(CiliumNetworkPolicy default\/rule-kafka\): spec\.ingress\[0\]\.toPorts\[0\]\.rules\.kafka: Kafka rules \(rules\.kafka\) are not supported: Ciliate has no Kafka proxy/);
  assert.deepEqual((JSON.parse((await cli(node, 'policy', 'list', '-o', 'json')).stdout) as { key: string }[]).map((r) => r.key), ['CiliumNetworkPolicy/default/rule1'], 'nothing of the rejected file was applied');
  assert.deepEqual(await probeTcp(xwing.netns, [port80]), { [port80]: false }, 'the policy in force still holds');
  assert.deepEqual(await probeTcp(tiefighter.netns, [port80]), { [port80]: true });

  // A label change moves the pod to another identity, and the policy follows it.
  const before = xwing.endpoint.identity;
  const relabelled = await cli(node, 'endpoint', 'labels', String(xwing.endpoint.id), 'org=empire', 'class=xwing', '-o', 'json');
  assert.equal(relabelled.code, 0, relabelled.stderr);
  assert.notEqual((JSON.parse(relabelled.stdout) as { identity: number }).identity, before);
  assert.deepEqual(await probeTcp(xwing.netns, [port80, port81]), { [port80]: true, [port81]: false }, 'the defector lands on 80 only');

  const deleted = await cli(node, 'policy', 'delete', 'CiliumNetworkPolicy/default/rule1');
  assert.equal(deleted.code, 0, deleted.stderr);
  assert.deepEqual(await probeTcp(xwing.netns, [port80]), { [port80]: true }, 'deleting the policy opens the door again');
});

test('verdict matrix with real traffic: CiliumNetworkPolicy, Kubernetes NetworkPolicy and CiliumClusterwideNetworkPolicy', async (t) => {
  const node = await TestNode.start(t);
  const ports = [5432, 8080, 9999, 7000];
  const pods = {
    web: await node.addPod(t, 'web', { app: 'web' }),
    api: await node.addPod(t, 'api', { app: 'api' }),
    db: await node.addPod(t, 'db', { app: 'db' }),
    client: await node.addPod(t, 'client', { app: 'client' }),
  };
  for (const pod of Object.values(pods)) await echoServer(t, pod.netns, ...ports);
  const imported = await cli(node, 'policy', 'import', join(POLICIES, 'matrix.yaml'));
  assert.equal(imported.code, 0, imported.stderr);
  assert.equal((await cli(node, 'policy', 'wait', /revision: (\d+)/.exec(imported.stdout)![1])).code, 0);

  // Worked out from the policies by hand, not by the engine:
  //  db  (CNP):  ingress only from app=api on 5432/TCP;
  //  web (KNP):  ingress from any pod of the namespace on 8080/TCP;
  //  api (CCNP): 9999/TCP denied from the cluster, everything else allowed (default deny off).
  const expected = (src: string, dst: string, port: number): boolean =>
    dst === 'db' ? src === 'api' && port === 5432 : dst === 'web' ? port === 8080 : dst === 'api' ? port !== 9999 : true;

  const mismatches: string[] = [];
  for (const [srcName, src] of Object.entries(pods)) {
    const targets = Object.entries(pods)
      .filter(([dstName]) => dstName !== srcName && dstName !== 'client')
      .flatMap(([dstName, dst]) => ports.map((port) => ({ dstName, port, target: `${dst.endpoint.ipv4}:${port}` })));
    const results = await probeTcp(src.netns, targets.map((x) => x.target));
    for (const { dstName, port, target } of targets) {
      if (results[target] !== expected(srcName, dstName, port)) mismatches.push(`${srcName} → ${dstName}:${port}: got ${results[target] ? 'allowed' : 'denied'}`);
    }
  }
  assert.deepEqual(mismatches, []);
});

test('Kubernetes NetworkPolicies with a named port: each web pod admits TCP on its own port named http and no other; the client sends only there', async (t) => {
  const node = await TestNode.start(t);
  const http = (port: number) => [{ name: 'http', port, protocol: 'TCP' as const }];
  const webA = await node.addPod(t, 'web-a', { app: 'web' }, 'shop', undefined, http(8080));
  const webB = await node.addPod(t, 'web-b', { app: 'web' }, 'shop', undefined, http(9090));
  const bare = await node.addPod(t, 'web-c', { app: 'web' }, 'shop');
  const open = await node.addPod(t, 'open', { app: 'open' }, 'shop');
  const client = await node.addPod(t, 'client', { app: 'client' }, 'shop');
  for (const pod of [webA, webB, bare, open]) await echoServer(t, pod.netns, 8080, 9090, 7000);
  const targets = [webA, webB, bare, open].flatMap((pod) => [8080, 9090, 7000].map((port) => `${pod.endpoint.ipv4}:${port}`));
  const [a8080, a9090, a7000, b8080, b9090, b7000, c8080, c9090, c7000, o8080, o9090, o7000] = targets;
  assert.deepEqual(Object.values(await probeTcp(client.netns, targets)), targets.map(() => true), 'no policy: every port answers');

  const imported = await cli(node, 'policy', 'import', join(POLICIES, 'named-port.yaml'));
  assert.equal(imported.code, 0, imported.stderr);
  assert.equal((await cli(node, 'policy', 'wait', /revision: (\d+)/.exec(imported.stdout)![1])).code, 0);
  // Ingress: web-a's http is 8080, web-b's 9090, web-c has none (nothing, not every port). Egress:
  // http is 8080 or 9090, the ports some pod gives the name: so too to the unpoliced open pod.
  assert.deepEqual(await probeTcp(client.netns, targets), {
    ...{ [a8080]: true, [a9090]: false, [a7000]: false },
    ...{ [b8080]: false, [b9090]: true, [b7000]: false },
    ...{ [c8080]: false, [c9090]: false, [c7000]: false },
    ...{ [o8080]: true, [o9090]: true, [o7000]: false },
  });
  const trace = await cli(node, 'policy', 'trace', '--src', String(client.endpoint.id), '--dst', String(webB.endpoint.id), '--dport', '9090/TCP');
  assert.equal(trace.code, 0, trace.stdout + trace.stderr);
  assert.match(trace.stdout, /verdict: ALLOWED/);

  // web-b goes: no pod gives http the number 9090 any more, so the client may no longer send there.
  await node.client.call('DELETE', '/v1/endpoints/web-b/eth0');
  const toOpen9090 = () => cli(node, 'policy', 'trace', '--src', String(client.endpoint.id), '--dst', String(open.endpoint.id), '--dport', '9090/TCP');
  for (let i = 0; i < 50 && (await toOpen9090()).code === 0; i++) await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(await probeTcp(client.netns, [o8080, o9090]), { [o8080]: true, [o9090]: false });
});

test('fromRequires: of two clients allowed by one policy, only the one with the label another policy requires connects', async (t) => {
  const node = await TestNode.start(t);
  const server = await node.addPod(t, 'server', { app: 'server' });
  const prod = await node.addPod(t, 'client-prod', { app: 'client', env: 'prod' });
  const dev = await node.addPod(t, 'client-dev', { app: 'client', env: 'dev' });
  await echoServer(t, server.netns, 8080, 7000);
  const [s8080, s7000] = [`${server.endpoint.ipv4}:8080`, `${server.endpoint.ipv4}:7000`];
  assert.deepEqual(await probeTcp(dev.netns, [s8080]), { [s8080]: true }, 'no policy: the dev client connects');

  const imported = await cli(node, 'policy', 'import', join(POLICIES, 'requires.yaml'));
  assert.equal(imported.code, 0, imported.stderr);
  assert.equal((await cli(node, 'policy', 'wait', /revision: (\d+)/.exec(imported.stdout)![1])).code, 0);
  assert.deepEqual(await probeTcp(prod.netns, [s8080, s7000]), { [s8080]: true, [s7000]: false }, 'prod: 8080 only');
  assert.deepEqual(await probeTcp(dev.netns, [s8080, s7000]), { [s8080]: false, [s7000]: false }, 'dev: dropped');
  const trace = await cli(node, 'policy', 'trace', '--src', String(dev.endpoint.id), '--dst', String(server.endpoint.id), '--dport', '8080/TCP');
  assert.equal(trace.code, 1, trace.stdout + trace.stderr);
  assert.match(trace.stdout, /denied by default/);

  // The dev client becomes prod: a new identity, which the requirement admits.
  const relabelled = await cli(node, 'endpoint', 'labels', String(dev.endpoint.id), 'app=client', 'env=prod');
  assert.equal(relabelled.code, 0, relabelled.stderr);
  assert.deepEqual(await probeTcp(dev.netns, [s8080]), { [s8080]: true }, 'relabelled prod: connects');
});

test('policy is enforced across two nodes sharing identities and policies through etcd', async (t) => {
  const underlay = await Underlay.create(t);
  const etcd = await underlay.startEtcd(t);
  const options = (nodeName: string, nodeIp: string): AgentOptions => ({ nodeName, nodeIp, underlay, etcd, routingMode: 'tunnel' });
  const nodes = [await TestNode.start(t, options('n1', '192.168.100.1')), await TestNode.start(t, options('n2', '192.168.100.2'))];
  const { deathstar, tiefighter, xwing, port80, port81 } = await starWars(t, nodes);
  const imported = await cli(nodes[1], 'policy', 'import', join(POLICIES, 'starwars-rule1.yaml'));
  assert.equal(imported.code, 0, `imported through the other node: ${imported.stderr}`);
  const revision = Number(/revision: (\d+)/.exec(imported.stdout)?.[1]);
  assert.ok(revision > 0, imported.stdout);

  // The revision is the store's, so the deathstar's node understands it: the wait there returns
  // once both nodes have applied the policy from etcd and written their endpoints' maps.
  const waited = await cli(nodes[0], 'policy', 'wait', String(revision), '--timeout', '20');
  assert.equal(waited.code, 0, waited.stderr);
  assert.match(waited.stdout, new RegExp(`revision ${revision} enforced`));
  assert.deepEqual((JSON.parse((await cli(nodes[0], 'policy', 'list', '-o', 'json')).stdout) as { key: string }[]).map((r) => r.key), ['CiliumNetworkPolicy/default/rule1']);
  const endpoints = JSON.parse((await cli(nodes[0], 'endpoint', 'list', '-o', 'json')).stdout) as { id: number; policyRevision?: number }[];
  const enforced = endpoints.find((ep) => ep.id === deathstar.endpoint.id)?.policyRevision;
  assert.ok(enforced !== undefined && enforced >= revision, `the deathstar reports revision ${enforced}, want ≥ ${revision}`);
  const table = (await cli(nodes[0], 'endpoint', 'list')).stdout.split('\n');
  assert.match(table[0], /^ID +IDENTITY +POLICY REVISION +IPV4/);
  assert.match(table.find((l) => l.startsWith(`${deathstar.endpoint.id} `)) ?? '', new RegExp(`^${deathstar.endpoint.id} +${deathstar.endpoint.identity} +${enforced} `));

  assert.deepEqual(await probeTcp(tiefighter.netns, [port80, port81]), { [port80]: true, [port81]: false });
  assert.deepEqual(await probeTcp(xwing.netns, [port80, port81]), { [port80]: false, [port81]: false });

  // The importing node understands its own revision; one not written yet times out.
  assert.equal((await cli(nodes[1], 'policy', 'wait', String(revision))).code, 0);
  const future = await cli(nodes[0], 'policy', 'wait', String(revision + 1_000_000), '--timeout', '0.3');
  assert.notEqual(future.code, 0);
  assert.match(future.stderr, new RegExp(`policy revision ${revision + 1_000_000} not enforced by every node within 300 ms; lagging: n1 \\(at revision \\d+\\), n2 \\(at revision \\d+\\)`));

  // Cluster scope: with n2's agent stopped (SIGSTOP, by the pid of the process this test
  // started), a revision imported on n1 is enforced on n1 but not on n2, and a cluster wait on
  // n1 says so; once n2 runs again the wait returns, and n2's datapath has the policy.
  const stopped = nodes[1].agent!;
  const resume = () => {
    if (stopped.exitCode === null && stopped.signalCode === null) stopped.kill('SIGCONT');
  };
  t.after(resume);
  stopped.kill('SIGSTOP');
  let grounded: number;
  try {
    const second = await cli(nodes[0], 'policy', 'import', join(POLICIES, 'starwars-grounded.yaml'));
    assert.equal(second.code, 0, second.stderr);
    grounded = Number(/revision: (\d+)/.exec(second.stdout)?.[1]);
    assert.ok(grounded > revision, second.stdout);
    const here = await cli(nodes[0], 'policy', 'wait', String(grounded), '--local', '--timeout', '5');
    assert.equal(here.code, 0, `n1 enforces it: ${here.stderr}`);
    const lagging = await cli(nodes[0], 'policy', 'wait', String(grounded), '--timeout', '1');
    assert.notEqual(lagging.code, 0, lagging.stdout);
    const reached = new RegExp(`policy revision ${grounded} not enforced by every node within 1000 ms; lagging: n2 \\(at revision (\\d+)\\)\n$`).exec(lagging.stderr);
    assert.ok(reached, `the error names n2 alone: ${lagging.stderr}`);
    assert.ok(Number(reached[1]) >= revision && Number(reached[1]) < grounded, `n2 reached ${reached[1]}: the first import, not the second`);
    assert.deepEqual(await probeTcp(tiefighter.netns, [port80]), { [port80]: true }, 'n2 has not grounded the tiefighter yet');
  } finally {
    resume();
  }
  const everywhere = await cli(nodes[0], 'policy', 'wait', String(grounded), '--timeout', '20');
  assert.equal(everywhere.code, 0, everywhere.stderr);
  assert.match(everywhere.stdout, new RegExp(`^revision ${grounded} enforced on every node: n1 \\(at \\d+\\), n2 \\(at \\d+\\)`));
  const onN2 = JSON.parse((await cli(nodes[1], 'endpoint', 'list', '-o', 'json')).stdout) as { id: number; policyRevision?: number }[];
  const tiefighterRevision = onN2.find((ep) => ep.id === tiefighter.endpoint.id)?.policyRevision;
  assert.ok(tiefighterRevision !== undefined && tiefighterRevision >= grounded, `the tiefighter reports revision ${tiefighterRevision}, want ≥ ${grounded}`);
  assert.deepEqual(await probeTcp(tiefighter.netns, [port80]), { [port80]: false }, 'n2 grounded the tiefighter');
});
