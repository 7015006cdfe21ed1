/**
 * The XDP balancer's per-CPU flow cache (bpf_xdp_lb.c ciliate_xlb_flow_cache) on the real kernel,
 * with BPF_PROG_TEST_RUN on crafted frames: the cache is only ever a copy of the connection
 * table's decision. A flow keeps its backend when the connection table lost its entry (and the
 * entry comes back at the refresh, from the cache, not from a Maglev re-pick); the connection
 * table overrules the cache at the refresh; a removed VIP and a removed backend end their cached
 * flows' way at once; a fragment of a cached flow is dropped and counted as before.
 *
 * The balancer is attached (generic XDP) to a veth in a namespace of the test's own;
 * the frames are run in that namespace, which has no route to the backends, so each balanced
 * frame comes back as XDP_PASS with its IPIP header on (the FIB lookup after the encapsulation
 * fails): the outer destination names the backend. The test's thread is pinned to one CPU, as
 * the cache is per CPU.
 * @module
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { inNetns } from '../src/ebpf/index.ts';
import { XdpLoadBalancer, parseXdpLbConfig, type XlbFlow } from '../src/loadbalancer/index.ts';
import { addNetns, sleep } from './support/cluster.ts';

const VIP = '192.0.2.10';
const X = '10.1.0.2';
const Y = '10.1.0.3';
const CLIENT = '10.9.9.9';
const XDP_DROP = 1;
const XDP_PASS = 2;
/** Past the cache's refresh (a second of jiffies). */
const REFRESH_MS = 1300;

function config(backends: readonly string[], options: { port?: number; weights?: Record<string, number> } = {}) {
  return parseXdpLbConfig(
    [
      'interface: l0',
      'xdpMode: generic',
      'source: 10.0.0.1',
      'vips:',
      `  - address: ${VIP}`,
      `    port: ${options.port ?? 80}`,
      '    protocol: UDP',
      `    backends: [${backends.map((b) => `{ address: ${b}${options.weights?.[b] === undefined ? '' : `, weight: ${options.weights[b]}`} }`).join(', ')}]`,
    ].join('\n'),
    'lb.yaml',
  );
}

/** Ethernet + IPv4 + UDP from CLIENT:sport to VIP:80, 60 bytes; `fragment`: MF set. */
function frame(sport: number, fragment = false): Buffer {
  const b = Buffer.alloc(60);
  b.writeUInt16BE(0x0800, 12);
  b.writeUInt8(0x45, 14);
  b.writeUInt16BE(46, 16);
  if (fragment) b.writeUInt16BE(0x2000, 20);
  b.writeUInt8(64, 22);
  b.writeUInt8(17, 23);
  Buffer.from(CLIENT.split('.').map(Number)).copy(b, 26);
  Buffer.from(VIP.split('.').map(Number)).copy(b, 30);
  b.writeUInt16BE(sport, 34);
  b.writeUInt16BE(80, 36);
  b.writeUInt16BE(26, 38);
  return b;
}

const flowOf = (sport: number): XlbFlow => ({ saddr: CLIENT, daddr: VIP, sport, dport: 80, proto: 17 });

test('XDP balancer flow cache: a copy of the connection table, never a decision of its own', async (t) => {
  execFileSync('taskset', ['-p', '-c', '0', String(process.pid)]);
  const netns = await addNetns(t, 'xlbfc');
  execFileSync('ip', ['-n', netns, 'link', 'add', 'l0', 'type', 'veth', 'peer', 'name', 'l1']);
  execFileSync('ip', ['-n', netns, 'link', 'set', 'l0', 'up']);
  const path = `/run/netns/${netns}`;
  const lb = XdpLoadBalancer.load();
  t.after(() => lb.close());
  const idOf = (address: string) => lb.stats().backends.find((b) => b.address === address)!.id;
  /** Runs one frame through the balancer: the backend it was sent to, or the verdict if none. */
  const send = (data: Buffer): { verdict: number; backend?: string } => {
    const out = inNetns(path, () => lb.program.testRun({ data }));
    if (out.returnValue !== XDP_PASS || out.data.length !== data.length + 20) return { verdict: out.returnValue };
    assert.equal(out.data.readUInt8(23), 4, 'IPIP');
    return { verdict: out.returnValue, backend: [...out.data.subarray(30, 34)].join('.') };
  };

  await t.test('an established flow keeps its backend when the connection table lost it, and gets its entry back', async () => {
    lb.apply(config([X, Y]), path);
    const sport = 40_000;
    const first = send(frame(sport)).backend!;
    assert.ok(first === X || first === Y, `backend ${first}`);
    const other = first === X ? Y : X;
    // Its backend out of the Maglev table (still configured): only the flow's memory keeps it there.
    lb.apply(config([X, Y], { weights: { [first]: 0 } }), path);
    lb.maps.conns.delete(flowOf(sport));
    assert.equal(send(frame(sport)).backend, first);
    assert.equal(lb.maps.conns.lookup(flowOf(sport)), undefined, 'the cached way does not touch the connection table');
    await sleep(REFRESH_MS);
    assert.equal(send(frame(sport)).backend, first, 'at the refresh: the cached backend, not a Maglev re-pick');
    assert.equal(lb.maps.conns.lookup(flowOf(sport))?.backend_id, idOf(first), 'the lost entry is back');
    // A new flow goes where Maglev says: the other backend.
    assert.equal(send(frame(sport + 1)).backend, other);
  });

  await t.test('the connection table overrules the cache at the refresh', async () => {
    const sport = 40_000;
    const cached = send(frame(sport)).backend!;
    const other = cached === X ? Y : X;
    lb.maps.conns.update(flowOf(sport), { backend_id: idOf(other) });
    assert.equal(send(frame(sport)).backend, cached, 'until the refresh, the cached copy');
    await sleep(REFRESH_MS);
    assert.equal(send(frame(sport)).backend, other);
    assert.equal(send(frame(sport)).backend, other);
  });

  await t.test('a backend removed from the config moves its cached flows at once', () => {
    lb.apply(config([X, Y]), path);
    const sport = 41_000;
    const first = send(frame(sport)).backend!;
    const other = first === X ? Y : X;
    assert.equal(send(frame(sport)).backend, first);
    lb.apply(config([other]), path);
    assert.equal(send(frame(sport)).backend, other);
    assert.equal(lb.maps.conns.lookup(flowOf(sport))?.backend_id, idOf(other));
  });

  await t.test('a fragment of a cached flow is dropped and counted', () => {
    lb.apply(config([X, Y]), path);
    const sport = 42_000;
    assert.ok(send(frame(sport)).backend);
    const before = lb.stats().drops.find((d) => d.reason === 'fragment')!.packets;
    assert.equal(send(frame(sport, true)).verdict, XDP_DROP);
    assert.equal(lb.stats().drops.find((d) => d.reason === 'fragment')!.packets, before + 1);
  });

  await t.test('a removed VIP ends its cached flows at once', () => {
    lb.apply(config([X, Y]), path);
    const sport = 43_000;
    assert.ok(send(frame(sport)).backend);
    assert.ok(send(frame(sport)).backend);
    // The VIP's address on another port only: port 80's flows are not the balancer's any more.
    lb.apply(config([X, Y], { port: 8080 }), path);
    const after = send(frame(sport));
    assert.deepEqual(after, { verdict: XDP_PASS }, 'passed to the stack untouched');
    const stats = lb.stats();
    assert.equal(stats.vips[0].vip, `${VIP}:8080/UDP`);
    assert.equal(stats.vips[0].packets, 0);
  });
});
