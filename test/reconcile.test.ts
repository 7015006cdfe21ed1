/**
 * Drift repair end to end: an agent's reconcilers put back what is changed or deleted behind its
 * back — a policy map entry (bpftool), a kernel route and the VXLAN device (ip), an ipcache and an
 * endpoint map entry (bpftool), the masquerade table (nft) — within the refresh interval, and count each repair in
 * `ciliate status`. A policy map write that fails because the map is full is retried, reported
 * (the agent is degraded, naming the policy module) and recovers once the policy shrinks.
 * @module
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { TestNode, Underlay, inNs } from './support/cluster.ts';
import type { EndpointView, NodeRecord, ReconcilerStatus } from '../src/agent/index.ts';
import { Link } from '../src/ebpf/index.ts';

const run = promisify(execFile);
/** Refresh interval of the agents here, in seconds. */
const REFRESH = 0.5;

/** A CNP letting org=empire reach the deathstar on `ports`, as JSON (which is YAML too). */
const deathstarPolicy = (name: string, ports: number[]) =>
  JSON.stringify({
    apiVersion: 'cilium.io/v2',
    kind: 'CiliumNetworkPolicy',
    metadata: { name },
    spec: {
      endpointSelector: { matchLabels: { org: 'empire', class: 'deathstar' } },
      ingress: [{ fromEndpoints: [{ matchLabels: { org: 'empire' } }], toPorts: [{ ports: ports.map((port) => ({ port: String(port), protocol: 'TCP' })) }] }],
    },
  });

async function status(node: TestNode): Promise<ReconcilerStatus> {
  return node.client.get<ReconcilerStatus>('/v1/status');
}

function counter(s: ReconcilerStatus, module: string, name: string, field: 'repairs' | 'prunes'): number {
  const r = s.reconcilers.find((x) => x.module === module && x.name === name);
  assert.ok(r, `status lists ${module}/${name}`);
  return r[field];
}

async function until<T>(what: string, check: () => Promise<T | undefined | false>, timeoutMs = 4 * REFRESH * 1000 + 3000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const result = await check();
    if (result) return result;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/**
 * After a few refreshes of an agent nobody disturbed, nothing was repaired or pruned: each
 * reconciler reads back what it wrote as equal (else the counts below would mean nothing).
 */
async function assertNoSpuriousRepairs(node: TestNode): Promise<void> {
  const first = (await status(node)).reconcilers.find((r) => r.name === 'endpoint-policy')!.refreshes;
  await until('two refreshes', async () => (await status(node)).reconcilers.find((r) => r.name === 'endpoint-policy')!.refreshes >= first + 2);
  const s = await status(node);
  assert.equal(s.state, 'ok', s.reasons.join('; '));
  assert.deepEqual(
    s.reconcilers.filter((r) => r.repairs + r.prunes > 0).map((r) => `${r.module}/${r.name}: ${r.repairs} repairs, ${r.prunes} prunes`),
    [],
  );
  assert.ok(s.reconcilers.every((r) => r.refreshes > 0), 'every reconciler has refreshed');
}

const hex = (bytes: number[]) => bytes.map((b) => b.toString(16).padStart(2, '0'));
const ipBytes = (ip: string) => ip.split('.').map(Number);

interface DumpedEntry {
  key: string[];
  value: string[];
}
async function bpftoolDump(path: string): Promise<{ key: number[]; value: number[] }[]> {
  const { stdout } = await run('bpftool', ['-j', 'map', 'dump', 'pinned', path]);
  return (JSON.parse(stdout) as DumpedEntry[]).map((e) => ({ key: e.key.map((b) => Number(b)), value: e.value.map((b) => Number(b)) }));
}

test('drift behind the agent\'s back — policy entry, route, VXLAN device, ipcache and endpoint map entry, masquerade — is repaired within the refresh interval and counted', async (t) => {
  const underlay = await Underlay.create(t);
  const etcd = await underlay.startEtcd(t);
  const options = { underlay, etcd, reconcileRefreshInterval: REFRESH };
  const n1 = await TestNode.start(t, { nodeName: 'n1', nodeIp: '192.168.100.1', ...options });
  const n2 = await TestNode.start(t, { nodeName: 'n2', nodeIp: '192.168.100.2', ...options });
  const deathstar = await n1.addPod(t, undefined, { org: 'empire', class: 'deathstar' });
  const tiefighter = await n1.addPod(t, undefined, { org: 'empire', class: 'tiefighter' });
  await n1.client.call('POST', '/v1/policies', { yaml: deathstarPolicy('rule1', [80]), file: 'rule1.yaml' });
  await assertNoSpuriousRepairs(n1);

  await t.test('a policy map entry turned into a deny by bpftool is turned back', async () => {
    const pin = join(n1.bpfRoot, 'endpoints', String(deathstar.endpoint.id), 'policy');
    const identity = tiefighter.endpoint.identity;
    // ciliate_policy_key: prefixlen u32, sec_label u32 (little endian), egress u8, protocol u8, dport be16.
    const isPort80 = (e: { key: number[] }) =>
      e.key[4] + (e.key[5] << 8) + (e.key[6] << 16) + e.key[7] * 2 ** 24 === identity && e.key[8] === 0 && e.key[9] === 6 && (e.key[10] << 8) + e.key[11] === 80;
    const entry = (await bpftoolDump(pin)).find(isPort80);
    assert.ok(entry, 'the tiefighter is allowed port 80');
    assert.equal(entry.value[2], 0, 'ciliate_policy_entry.flags: no deny');
    const repairs = counter(await status(n1), 'policy', 'endpoint-policy', 'repairs');
    const denied = [...entry.value];
    denied[2] = 1;
    await run('bpftool', ['map', 'update', 'pinned', pin, 'key', 'hex', ...hex(entry.key), 'value', 'hex', ...hex(denied)]);
    assert.equal((await bpftoolDump(pin)).find(isPort80)?.value[2], 1, 'the entry denies now');
    await until('the entry to allow again', async () => (await bpftoolDump(pin)).find(isPort80)?.value[2] === 0);
    assert.ok(counter(await status(n1), 'policy', 'endpoint-policy', 'repairs') > repairs, 'the repair is counted');
  });

  await t.test('a route deleted with ip is put back', async () => {
    const [record] = (await n1.client.get<NodeRecord[]>('/v1/nodes')).filter((n) => n.name === 'n2');
    const routes = () => inNs(n1.netns, 'ip', ['route', 'show', 'proto', '211']);
    await until('the route to n2', async () => (await routes()).includes(record.podCidr));
    const repairs = counter(await status(n1), 'node-routing', 'routes', 'repairs');
    // `ip route del` fails unless the route was there; reading it back would race the agent,
    // which hears the deletion over rtnetlink and may have put the route back already.
    await inNs(n1.netns, 'ip', ['route', 'del', record.podCidr, 'proto', '211']);
    await until('the route to come back', async () => (await routes()).includes(record.podCidr));
    assert.ok(counter(await status(n1), 'node-routing', 'routes', 'repairs') > repairs);
    assert.ok(n2.agent, 'n2 still runs');
  });

  await t.test('the VXLAN device deleted with ip is created again, with its program, node config and routes', async () => {
    const [record] = (await n1.client.get<NodeRecord[]>('/v1/nodes')).filter((n) => n.name === 'n2');
    const device = async () => JSON.parse(await inNs(n1.netns, 'ip', ['-j', 'link', 'show', 'dev', 'ciliate_vxlan']).catch(() => '[]')) as { ifindex: number; mtu: number }[];
    const [before] = await device();
    assert.ok(before, 'tunnel mode has its device');
    const s = await status(n1);
    const [tunnelRepairs, routeRepairs] = [counter(s, 'node-routing', 'tunnel', 'repairs'), counter(s, 'node-routing', 'routes', 'repairs')];
    await inNs(n1.netns, 'ip', ['link', 'del', 'ciliate_vxlan']);
    const [after] = await until('the device to come back', async () => {
      const now = await device();
      return now.length > 0 && now;
    });
    assert.equal(after.mtu, before.mtu);
    // bpftool 7.1 does not know TCX links: ask the kernel through the eBPF library.
    const overlayIfindex = () => {
      try {
        using link = Link.openPinned(join(n1.bpfRoot, 'overlay', 'from-overlay'));
        return link.info().ifindex;
      } catch {
        return undefined;
      }
    };
    await until('the overlay program to serve the new device', async () => overlayIfindex() === after.ifindex);
    // The routes through the old device went with it; they come back through the new one.
    await until('the route through the new device', async () => (await inNs(n1.netns, 'ip', ['route', 'show', 'proto', '211'])).includes(record.podCidr));
    const now = await status(n1);
    assert.ok(counter(now, 'node-routing', 'tunnel', 'repairs') > tunnelRepairs);
    assert.ok(counter(now, 'node-routing', 'routes', 'repairs') > routeRepairs);
  });

  await t.test('an ipcache entry deleted with bpftool is put back', async () => {
    const path = join(n1.bpfRoot, 'maps', 'ciliate_ipcache');
    const address = deathstar.endpoint.ipv4;
    // ipcache_key: prefixlen u32 (little endian), then the address.
    const key = hex([32, 0, 0, 0, ...ipBytes(address)]);
    const has = async () => (await n1.client.get<{ key: { ip: string; prefixlen: number } }[]>('/v1/bpf/ipcache')).some((e) => e.key.ip === address && e.key.prefixlen === 32);
    assert.ok(await has());
    const repairs = counter(await status(n1), 'ipcache', 'ipcache', 'repairs');
    await run('bpftool', ['map', 'delete', 'pinned', path, 'key', 'hex', ...key]);
    assert.equal(await has(), false, 'the entry is gone');
    await until('the ipcache entry to come back', has);
    assert.ok(counter(await status(n1), 'ipcache', 'ipcache', 'repairs') > repairs);
  });

  await t.test('an endpoint map entry deleted with bpftool is put back, and a stray one is pruned', async () => {
    const path = join(n1.bpfRoot, 'maps', 'ciliate_lxc');
    const address = tiefighter.endpoint.ipv4;
    const ips = async () => (await n1.client.get<{ key: { ip: string } }[]>('/v1/bpf/endpoint')).map((e) => e.key.ip);
    const s = await status(n1);
    const [repairs, prunes] = [counter(s, 'endpoints', 'endpoint-datapath', 'repairs'), counter(s, 'endpoints', 'endpoint-datapath', 'prunes')];
    const [entry] = (await bpftoolDump(path)).filter((e) => e.key.join('.') === address);
    assert.ok(entry, 'the tiefighter has its endpoint map entry');
    await run('bpftool', ['map', 'delete', 'pinned', path, 'key', 'hex', ...hex(ipBytes(address))]);
    // An entry for an address no endpoint has, as a crashed agent could leave.
    await run('bpftool', ['map', 'update', 'pinned', path, 'key', 'hex', ...hex(ipBytes('10.244.250.250')), 'value', 'hex', ...hex(entry.value)]);
    await until('the endpoint map to be right again', async () => {
      const now = await ips();
      return now.includes(address) && !now.includes('10.244.250.250');
    });
    const after = await status(n1);
    assert.ok(counter(after, 'endpoints', 'endpoint-datapath', 'repairs') > repairs);
    assert.ok(counter(after, 'endpoints', 'endpoint-datapath', 'prunes') > prunes);
  });

  await t.test('the masquerade table deleted with nft is put back', async () => {
    const repairs = counter(await status(n1), 'masquerade', 'masquerade', 'repairs');
    await inNs(n1.netns, 'nft', ['delete', 'table', 'ip', 'ciliate']);
    await until('the masquerade rule to come back', async () => /masquerade/.test(await inNs(n1.netns, 'nft', ['list', 'table', 'ip', 'ciliate']).catch(() => '')));
    assert.ok(counter(await status(n1), 'masquerade', 'masquerade', 'repairs') > repairs);
  });

  const after = await status(n1);
  assert.equal(after.state, 'ok', after.reasons.join('; '));
});

test('a policy map write that fails because the map is full is retried and reported, the agent degraded naming policy, until the policy shrinks', async (t) => {
  // Eight entries per endpoint map: a port or two fit next to the default entries, twelve do not.
  const node = await TestNode.start(t, { reconcileRefreshInterval: REFRESH, policyMapMaxEntries: 8 });
  const deathstar = await node.addPod(t, undefined, { org: 'empire', class: 'deathstar' });
  await assertNoSpuriousRepairs(node);
  const policyRevision = async () => (await node.client.get<EndpointView>(`/v1/endpoints/${deathstar.endpoint.id}`)).policyRevision ?? 0;
  const small = await node.client.call<{ revision: number }>('POST', '/v1/policies', { yaml: deathstarPolicy('small', [80]), file: 'small.yaml' });
  assert.ok((await policyRevision()) >= small.revision);

  const big = await node.client.call<{ revision: number }>('POST', '/v1/policies', {
    yaml: deathstarPolicy('big', Array.from({ length: 12 }, (_, i) => 8000 + i)),
    file: 'big.yaml',
  });
  const degraded = await until('the agent to report itself degraded', async () => {
    const s = await status(node);
    return s.state === 'degraded' && s;
  });
  assert.equal(degraded.reasons.length, 1, degraded.reasons.join('; '));
  assert.match(degraded.reasons[0], new RegExp(`^policy: endpoint-policy: ${deathstar.endpoint.id} failed \\d+ times: .*ENOSPC`));
  const policy = degraded.reconcilers.find((r) => r.module === 'policy')!;
  assert.ok(policy.errors === 1 && policy.pending === 1, 'the failed write is pending, not forgotten');
  assert.match(policy.lastError ?? '', /ENOSPC/);
  assert.ok((await policyRevision()) < big.revision, 'the endpoint does not claim the revision it could not write');
  const text = await run(process.execPath, [join(import.meta.dirname, '..', 'src', 'cli', 'main.ts'), 'status', '--socket', node.socket]);
  assert.match(text.stdout, /^state: +degraded$/m);
  assert.match(text.stdout, /^degraded: +policy: endpoint-policy: /m);
  assert.match(text.stdout, /^policy +endpoint-policy +degraded /m);

  // Still failing a while later: retried, not given up on.
  const attempts = (s: ReconcilerStatus) => Number(/failed (\d+) times/.exec(s.reasons[0] ?? '')?.[1] ?? 0);
  await until('another retry', async () => attempts(await status(node)) > attempts(degraded));

  const shrunk = await node.client.call<{ revision: number }>('DELETE', '/v1/policies?key=CiliumNetworkPolicy/default/big');
  await until('the agent to recover', async () => (await status(node)).state === 'ok');
  await until('the endpoint to catch up', async () => (await policyRevision()) >= shrunk.revision);
  const recovered = (await status(node)).reconcilers.find((r) => r.module === 'policy')!;
  assert.equal(recovered.errors, 0);
  assert.equal(recovered.pending, 0);
});
