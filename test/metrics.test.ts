import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { reservedIdentities } from '../src/identity/index.ts';
import { parsePrometheusText, sampleValue, type MetricFamily } from '../src/metrics/text-format-testing.ts';
import { TestNode, Underlay, cli, echoServer, inNs, probeTcp, sleep } from './support/cluster.ts';

const POLICIES = join(import.meta.dirname, 'policies');
// Inside the node's own namespace, so no other test's agent shares its loopback; not the default
// port all the same, so the test also shows the setting is used.
const METRICS = '127.0.0.1:19962';
const HUBBLE = '127.0.0.1:19965';

const FETCH = `fetch(process.argv[1]).then(async (r) => { if (r.status !== 200) throw new Error('status ' + r.status); process.stdout.write(await r.text()); })`;

async function scrape(node: TestNode, address = METRICS): Promise<Map<string, MetricFamily>> {
  return parsePrometheusText(await inNs(node.netns, process.execPath, ['-e', FETCH, `http://${address}/metrics`]));
}

const value = (m: Map<string, MetricFamily>, name: string, labels: Record<string, string> = {}) => sampleValue(m, name, labels) ?? 0;

test("the agent's /metrics counts what the test did, under Cilium's names: denied SYNs, endpoints, policies, identities, map pressure", async (t) => {
  const node = await TestNode.start(t, { extraArgs: ['--prometheus-serve-addr', METRICS, '--hubble-metrics-server', HUBBLE, '--hubble-metrics', 'drop,tcp,flow,port-distribution,policy', '--bpf-map-pressure-interval', '0'] });
  const deathstar = await node.addPod(t, 'deathstar', { org: 'empire', class: 'deathstar' });
  const tiefighter = await node.addPod(t, 'tiefighter', { org: 'empire', class: 'tiefighter' });
  const xwing = await node.addPod(t, 'xwing', { org: 'alliance', class: 'xwing' });
  await echoServer(t, deathstar.netns, 80);

  const imported = await cli(node, 'policy', 'import', join(POLICIES, 'starwars-rule1.yaml'));
  assert.equal(imported.code, 0, imported.stderr);
  const revision = Number(/revision: (\d+)/.exec(imported.stdout)?.[1]);
  assert.equal((await cli(node, 'policy', 'wait', String(revision), '--local')).code, 0);
  const rejected = await cli(node, 'policy', 'import', join(POLICIES, 'starwars-kafka.yaml'));
  assert.notEqual(rejected.code, 0, 'an L7 rule is refused');

  const before = await scrape(node);
  const port80 = `${deathstar.endpoint.ipv4}:80`;
  assert.deepEqual(await probeTcp(tiefighter.netns, [port80]), { [port80]: true }, 'the tiefighter lands');
  // Five connections from the xwing, each from its own port: at least five SYNs denied at the
  // deathstar's ingress (more with retransmissions).
  const sent = 5;
  const denied = await Promise.all(Array.from({ length: sent }, () => probeTcp(xwing.netns, [port80], 1200)));
  assert.ok(denied.every((r) => r[port80] === false), 'the xwing is denied');
  const after = await scrape(node);

  const policyDenied = { reason: 'Policy denied', direction: 'INGRESS' };
  assert.equal(after.get('cilium_drop_count_total')?.type, 'counter');
  const droppedPackets = value(after, 'cilium_drop_count_total', policyDenied) - value(before, 'cilium_drop_count_total', policyDenied);
  const droppedBytes = value(after, 'cilium_drop_bytes_total', policyDenied) - value(before, 'cilium_drop_bytes_total', policyDenied);
  assert.ok(droppedPackets >= sent, `cilium_drop_count_total{reason="Policy denied",direction="INGRESS"} grew by ${droppedPackets}, want ≥ ${sent}: ${JSON.stringify(after.get('cilium_drop_count_total')?.samples)}`);
  assert.ok(droppedBytes >= droppedPackets * 54, `a dropped SYN is at least 54 bytes on the wire: ${droppedBytes} bytes for ${droppedPackets} packets`);
  // The tiefighter's round trip: at least SYN, ACK, data and FIN out of the tiefighter, all
  // forwarded (pod to pod on one node, so counted on the way out only: the redirect skips the
  // destination's hook).
  const egress = { direction: 'EGRESS' };
  const forwarded = value(after, 'cilium_forward_count_total', egress) - value(before, 'cilium_forward_count_total', egress);
  assert.ok(forwarded >= 4, `cilium_forward_count_total{direction="EGRESS"} grew by ${forwarded}, want ≥ 4`);
  assert.ok(value(after, 'cilium_forward_bytes_total', egress) - value(before, 'cilium_forward_bytes_total', egress) >= forwarded * 54, 'forwarded bytes');

  assert.equal(value(after, 'cilium_endpoint'), 3);
  assert.equal(value(after, 'cilium_endpoint_state', { endpoint_state: 'ready' }), 3, JSON.stringify(after.get('cilium_endpoint_state')?.samples));
  assert.equal(value(after, 'cilium_policy'), 1);
  assert.ok(value(after, 'cilium_policy_max_revision') >= revision, `policy revision ${value(after, 'cilium_policy_max_revision')} ≥ ${revision}`);
  assert.equal(value(after, 'cilium_policy_change_total', { outcome: 'success' }), 1);
  assert.equal(value(after, 'cilium_policy_change_total', { outcome: 'fail' }), 1, 'the refused import');
  assert.ok(value(after, 'cilium_identity', { type: 'cluster' }) >= 3, 'one identity per ship class');
  assert.equal(value(after, 'cilium_identity', { type: 'reserved' }), reservedIdentities().length);

  const pressure = new Map(after.get('cilium_bpf_map_pressure')?.samples.map((s) => [s.labels.map_name, s.value]));
  assert.deepEqual([...pressure.keys()].sort(), ['ciliate_ct4', 'ciliate_ipcache', 'ciliate_lxc', 'ciliate_policy_maps']);
  for (const [map, ratio] of pressure) assert.ok(ratio >= 0 && ratio <= 1, `${map} pressure ${ratio} in [0, 1]`);
  assert.equal(pressure.get('ciliate_lxc'), 3 / 65536, 'three endpoints in a 64k map');
  assert.ok(pressure.get('ciliate_ct4')! > 0, 'the tiefighter\'s connection is tracked');

  assert.equal(value(after, 'ciliate_agent_degraded'), 0);
  const reconcilers = after.get('ciliate_reconciler_errors')?.samples.map((s) => `${s.labels.module}/${s.labels.reconciler}`) ?? [];
  assert.ok(reconcilers.includes('endpoints/endpoint-datapath'), `reconcilers: ${reconcilers.join(', ')}`);
  assert.equal(after.get('ciliate_reconciler_repairs_total')?.type, 'counter');

  // Hubble's server runs beside it; with no observer feeding it yet only the loss counter is there.
  const hubble = await scrape(node, HUBBLE);
  assert.equal(hubble.get('hubble_flows_processed_total')?.type, 'counter');
  assert.equal(hubble.get('hubble_lost_events_total')?.type, 'counter');
  // Every flow the observer made was counted: the xwing's denied SYNs as drops and denied verdicts.
  assert.ok(value(hubble, 'hubble_drop_total', { reason: 'POLICY_DENIED', protocol: 'TCP' }) >= 5, 'hubble_drop_total counts the denied SYNs');
  assert.ok(value(hubble, 'hubble_flows_processed_total', { type: 'Drop', subtype: '', verdict: 'DROPPED', protocol: 'TCP' }) >= 5);
  assert.ok(value(hubble, 'hubble_policy_verdicts_total', { direction: 'ingress', match: 'none', action: 'dropped' }) >= 5, 'and the verdicts that denied them');
  // Forwarded SYNs: the tiefighter's, as its trace and as the deathstar's allowing ingress verdict
  // (the xwing's were dropped, and dropped flows carry no flag count).
  assert.ok(value(hubble, 'hubble_tcp_flags_total', { flag: 'SYN', family: 'IPv4' }) >= 2);
  // Only the deathstar's ingress is policed: the ships' egress, which no rule enforces, reports
  // no verdicts, as Cilium's.
  const verdicts = hubble.get('hubble_policy_verdicts_total')?.samples ?? [];
  assert.deepEqual(verdicts.filter((s) => s.labels.direction !== 'ingress'), [], JSON.stringify(verdicts));
});

test('cilium_nodes_all_num and cilium_unreachable_nodes follow a real second node: reachable, cut off, back, its agent killed, then deregistered', async (t) => {
  const underlay = await Underlay.create(t);
  const etcd = await underlay.startEtcd(t);
  const args = ['--prometheus-serve-addr', METRICS, '--health-probe-interval', '300'];
  const n1 = await TestNode.start(t, { nodeName: 'n1', nodeIp: '192.168.100.1', underlay, etcd, extraArgs: args });
  const n2 = await TestNode.start(t, { nodeName: 'n2', nodeIp: '192.168.100.2', underlay, etcd, extraArgs: args });
  type Status = { clusterHealth: { reachable: number; probed: number; unreachable: string[] } };
  const nodesOf = async (node: TestNode) => {
    const metrics = await scrape(node);
    return { all: sampleValue(metrics, 'cilium_nodes_all_num', {}), unreachable: sampleValue(metrics, 'cilium_unreachable_nodes', {}) };
  };
  const until = async (what: string, node: TestNode, want: { all: number; unreachable: number }) => {
    const deadline = Date.now() + 15_000;
    let last = await nodesOf(node);
    while (last.all !== want.all || last.unreachable !== want.unreachable) {
      assert.ok(Date.now() < deadline, `${what}: ${JSON.stringify(last)}, want ${JSON.stringify(want)}; status ${JSON.stringify((await node.client.get<Status>('/v1/status')).clusterHealth)}`);
      await sleep(100);
      last = await nodesOf(node);
    }
  };
  await until('both nodes known and reachable, seen from n1', n1, { all: 2, unreachable: 0 });
  await until('and from n2', n2, { all: 2, unreachable: 0 });
  assert.deepEqual((await n1.client.get<Status>('/v1/status')).clusterHealth, { enabled: true, reachable: 1, probed: 1, unreachable: [] });

  // n2's link to the underlay goes down: its agent runs, but nothing reaches it.
  await inNs(n2.netns, 'ip', ['link', 'set', 'uplink', 'down']);
  await until('n2 cut off', n1, { all: 2, unreachable: 1 });
  assert.match((await n1.client.get<Status>('/v1/status')).clusterHealth.unreachable.join(), /^n2: 192\.168\.100\.2:4240: no answer within 300 ms$/);
  await inNs(n2.netns, 'ip', ['link', 'set', 'uplink', 'up']);
  await until('n2 back', n1, { all: 2, unreachable: 0 });

  // n2's agent dies: the node stays registered (it may come back) but answers no probe.
  await n2.stopAgent('SIGKILL');
  await until("n2's agent gone", n1, { all: 2, unreachable: 1 });
  // A probe the kill cut short is reset; the ones after it are refused.
  assert.match((await n1.client.get<Status>('/v1/status')).clusterHealth.unreachable.join(), /^n2: 192\.168\.100\.2:4240: (ECONNREFUSED|ECONNRESET)$/);

  // Deregistered for good: no longer a node of the cluster, so not an unreachable one either.
  const deleted = await cli(n1, 'node', 'delete', 'n2');
  assert.equal(deleted.code, 0, deleted.stderr);
  await until('n2 deregistered', n1, { all: 1, unreachable: 0 });
});
