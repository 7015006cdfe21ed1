import assert from 'node:assert/strict';
import { test } from 'node:test';
import { HubbleMetrics, PENDING_LABEL_SETS, Registry, parseHubbleMetrics, type FlowMetricInput } from './index.ts';
import { parsePrometheusText, sampleValue } from './text-format-testing.ts';

const xwing = { namespace: 'default', podName: 'xwing', identity: 257, workload: 'xwing' };
const deathstar = { namespace: 'empire', podName: 'deathstar-1', identity: 258, workload: 'deathstar' };

function metrics(entries: string[]): { hubble: HubbleMetrics; scrape: () => Promise<ReturnType<typeof parsePrometheusText>> } {
  const options = parseHubbleMetrics(entries);
  assert.ok(typeof options !== 'string', String(options));
  const registry = new Registry();
  const hubble = new HubbleMetrics(registry, options);
  return { hubble, scrape: async () => parsePrometheusText(await registry.metrics()) };
}

test("each flow counts in Hubble's metrics with Hubble's names and labels, the context options adding source and destination", async () => {
  const { hubble, scrape } = metrics(['flow:sourceContext=namespace;destinationContext=namespace', 'drop', 'tcp', 'policy:sourceContext=pod;destinationContext=workload-name', 'port-distribution']);
  const syn: FlowMetricInput = { type: 'Trace', subtype: 'to-endpoint', verdict: 'FORWARDED', protocol: 'TCP', ipVersion: 4, tcpFlags: { SYN: true }, destinationPort: 80, isReply: false, trafficDirection: 'ingress', source: xwing, destination: deathstar };
  for (let i = 0; i < 3; i++) hubble.observeFlow(syn);
  hubble.observeFlow({ ...syn, tcpFlags: { SYN: true, ACK: true }, isReply: true, destinationPort: 40000, source: deathstar, destination: xwing });
  const denied: FlowMetricInput = { type: 'Drop', verdict: 'DROPPED', dropReason: 'POLICY_DENIED', protocol: 'TCP', tcpFlags: { SYN: true }, destinationPort: 81, isReply: false, source: xwing, destination: deathstar };
  for (let i = 0; i < 5; i++) hubble.observeFlow(denied);
  hubble.observeFlow({ type: 'PolicyVerdict', verdict: 'DROPPED', dropReason: 'POLICY_DENIED', protocol: 'TCP', trafficDirection: 'ingress', policyMatch: 'none', source: xwing, destination: deathstar });
  hubble.observeFlow({ type: 'PolicyVerdict', verdict: 'FORWARDED', protocol: 'TCP', trafficDirection: 'ingress', policyMatch: 'l3-l4', source: xwing, destination: deathstar });
  hubble.lostEvents('perf_event_ring_buffer', 7);
  hubble.lostEvents('hubble_ring_buffer', 0);

  const m = await scrape();
  assert.equal(m.get('hubble_flows_processed_total')?.type, 'counter');
  assert.equal(sampleValue(m, 'hubble_flows_processed_total', { source: 'default', destination: 'empire', protocol: 'TCP', type: 'Trace', subtype: 'to-endpoint', verdict: 'FORWARDED' }), 3);
  assert.equal(sampleValue(m, 'hubble_flows_processed_total', { source: 'empire', destination: 'default', protocol: 'TCP', type: 'Trace', subtype: 'to-endpoint', verdict: 'FORWARDED' }), 1, 'the reply, the other way round');
  assert.equal(sampleValue(m, 'hubble_flows_processed_total', { source: 'default', destination: 'empire', protocol: 'TCP', type: 'Drop', subtype: '', verdict: 'DROPPED' }), 5);
  assert.equal(sampleValue(m, 'hubble_drop_total', { reason: 'POLICY_DENIED', protocol: 'TCP' }), 6, 'five drops and one denied verdict');
  assert.equal(sampleValue(m, 'hubble_tcp_flags_total', { flag: 'SYN', family: 'IPv4' }), 3, 'forwarded SYNs only: dropped ones are not');
  assert.equal(sampleValue(m, 'hubble_tcp_flags_total', { flag: 'SYN-ACK', family: 'IPv4' }), 1);
  assert.equal(sampleValue(m, 'hubble_policy_verdicts_total', { source: 'default/xwing', destination: 'deathstar', direction: 'ingress', match: 'none', action: 'dropped' }), 1);
  assert.equal(sampleValue(m, 'hubble_policy_verdicts_total', { source: 'default/xwing', destination: 'deathstar', direction: 'ingress', match: 'l3-l4', action: 'forwarded' }), 1);
  assert.equal(sampleValue(m, 'hubble_port_distribution_total', { protocol: 'TCP', port: '80' }), 3, 'requests forwarded to 80');
  assert.equal(sampleValue(m, 'hubble_port_distribution_total', { protocol: 'TCP', port: '40000' }), undefined, "a reply's port is not a service port");
  assert.equal(sampleValue(m, 'hubble_port_distribution_total', { protocol: 'TCP', port: '81' }), undefined, 'dropped requests are not distributed');
  assert.equal(sampleValue(m, 'hubble_lost_events_total', { source: 'perf_event_ring_buffer' }), 7);
});

test('a context option with alternatives takes the first the flow has; metrics not enabled are not served', async () => {
  const { hubble, scrape } = metrics(['drop:sourceContext=workload|identity']);
  hubble.observeFlow({ type: 'Drop', verdict: 'DROPPED', dropReason: 'POLICY_DENIED', protocol: 'UDP', source: { identity: 2 } });
  hubble.observeFlow({ type: 'Drop', verdict: 'DROPPED', dropReason: 'POLICY_DENIED', protocol: 'UDP', source: xwing });
  const m = await scrape();
  assert.equal(sampleValue(m, 'hubble_drop_total', { source: '2', reason: 'POLICY_DENIED', protocol: 'UDP' }), 1, 'no workload: the identity');
  assert.equal(sampleValue(m, 'hubble_drop_total', { source: 'default/xwing', reason: 'POLICY_DENIED', protocol: 'UDP' }), 1);
  assert.deepEqual([...m.keys()].sort(), ['hubble_drop_total', 'hubble_lost_events_total']);
});

test('counts are exact across scrapes and past the label sets held between them; the metric keeps every label set', async () => {
  const { hubble, scrape } = metrics(['port-distribution:sourceContext=pod']);
  const request = (port: number, podName: string): FlowMetricInput => ({ type: 'Trace', verdict: 'FORWARDED', protocol: 'UDP', destinationPort: port, isReply: false, source: { namespace: 'default', podName } });
  hubble.observeFlow(request(53, 'a'));
  let m = await scrape();
  assert.equal(sampleValue(m, 'hubble_port_distribution_total', { source: 'default/a', protocol: 'UDP', port: '53' }), 1);
  hubble.observeFlow(request(53, 'a'));
  hubble.observeFlow(request(53, 'a'));
  m = await scrape();
  assert.equal(sampleValue(m, 'hubble_port_distribution_total', { source: 'default/a', protocol: 'UDP', port: '53' }), 3, 'counted before and after a scrape');
  m = await scrape();
  assert.equal(sampleValue(m, 'hubble_port_distribution_total', { source: 'default/a', protocol: 'UDP', port: '53' }), 3, 'a scrape adds nothing');
  // Churning label sets, more than are held at once, each seen twice far apart.
  const sets = PENDING_LABEL_SETS + 500;
  for (let round = 0; round < 2; round++) for (let i = 0; i < sets; i++) hubble.observeFlow(request(1000 + (i % 1000), `p${Math.floor(i / 1000)}`));
  m = await scrape();
  for (let i = 0; i < sets; i += 97) {
    assert.equal(sampleValue(m, 'hubble_port_distribution_total', { source: `default/p${Math.floor(i / 1000)}`, protocol: 'UDP', port: String(1000 + (i % 1000)) }), 2, `label set ${i}`);
  }
  assert.equal(m.get('hubble_port_distribution_total')?.samples.length, sets + 1);
});

test('--hubble-metrics entries are checked: unknown metric, option, context, or a metric twice, each named', () => {
  assert.match(String(parseHubbleMetrics(['kafka'])), /"kafka": unknown metric "kafka"/);
  assert.match(String(parseHubbleMetrics(['flow:sourceContex=namespace'])), /unknown option "sourceContex=namespace"/);
  assert.match(String(parseHubbleMetrics(['flow:sourceContext=namespace|cluster'])), /sourceContext "cluster" is not one of/);
  assert.match(String(parseHubbleMetrics(['flow', 'flow:sourceContext=pod'])), /metric flow is listed twice/);
  assert.deepEqual(parseHubbleMetrics(['tcp:destinationContext=pod-name']), [{ name: 'tcp', sourceContext: [], destinationContext: ['pod-name'] }]);
});

test('the test parser is strict: what Prometheus would refuse throws', () => {
  const ok = '# HELP a_total A.\n# TYPE a_total counter\na_total{x="1"} 2\na_total{x="q\\"\\n"} 3\n';
  assert.equal(sampleValue(parsePrometheusText(ok), 'a_total', { x: 'q"\n' }), 3);
  assert.throws(() => parsePrometheusText('a 1'), /newline/);
  assert.throws(() => parsePrometheusText('a{x="1"} 1\na{x="1"} 2\n'), /twice/);
  assert.throws(() => parsePrometheusText('a 1\nb 1\na{y="2"} 1\n'), /appears again/);
  assert.throws(() => parsePrometheusText('# TYPE a counter\na -1\n'), /counter a is -1/);
  assert.throws(() => parsePrometheusText('a{x=1} 1\n'), /not quoted/);
  assert.throws(() => parsePrometheusText('a one\n'), /not a sample value/);
  assert.throws(() => parsePrometheusText('a 1\n# TYPE a gauge\n'), /TYPE after samples/);
});
