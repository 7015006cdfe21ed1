/**
 * The network-configuration boundary against the real kernel, each test in network namespaces
 * of its own (removed even when it fails), checked through iproute2 as an outside witness. Needs
 * root and `npm run build` (the rtnetlink addon).
 * @module
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { LxcProgram, loadLxc } from '../lxc.ts';
import { AddressEvents, errnoOf, Netlink, NetlinkError, type AddressEvent } from './index.ts';

function sh(command: string, args: string[]): string {
  return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** A fresh namespace, deleted after the test; returns its name and file. */
function netns(t: TestContext, prefix = 'nlt'): { name: string; path: string } {
  const name = `${prefix}${randomBytes(4).toString('hex')}`;
  sh('ip', ['netns', 'add', name]);
  t.after(() => sh('ip', ['netns', 'del', name]));
  return { name, path: `/run/netns/${name}` };
}

function inNs(ns: { name: string }, args: string[]): string {
  return sh('ip', ['netns', 'exec', ns.name, ...args]);
}

function open(t: TestContext, path: string): Netlink {
  const nl = Netlink.open({ netns: path });
  t.after(() => nl.close());
  return nl;
}

interface IpLinkJson {
  ifname: string;
  address: string;
  mtu: number;
  flags: string[];
  linkinfo?: { info_kind?: string; info_data?: { external?: boolean; port?: number; learning?: boolean } };
}

const ipLink = (ns: { name: string }, dev: string): IpLinkJson => (JSON.parse(inNs(ns, ['ip', '-d', '-j', 'link', 'show', 'dev', dev])) as IpLinkJson[])[0];

test('a veth pair across two namespaces: names, MTUs and MACs as both sides see them', async (t) => {
  const host = netns(t);
  const pod = netns(t);
  const nl = open(t, host.path);
  const created = await nl.createVeth({ name: 'lxctest0', peerName: 'eth0', peerNetns: pod.path, mtu: 1450, peerMtu: 1400, group: 6515052 });
  assert.equal(created.group, 6515052, 'the group comes with the link, in the same request');
  assert.equal(created.name, 'lxctest0');
  assert.equal(created.kind, 'veth');
  assert.equal(created.mtu, 1450);
  assert.equal(created.up, false);
  const hostSeen = ipLink(host, 'lxctest0');
  assert.equal(created.mac, hostSeen.address, 'the MAC reported is the kernel\'s');
  const podSeen = ipLink(pod, 'eth0');
  assert.equal(podSeen.mtu, 1400, 'the peer got its own MTU');

  const podNl = open(t, pod.path);
  const peer = await podNl.link('eth0');
  assert.ok(peer, 'the peer is in the pod namespace');
  assert.equal(peer.mac, podSeen.address);
  assert.equal(await nl.link('eth0'), undefined, 'and not in the host namespace');
  assert.equal((await podNl.link(peer.ifindex))?.name, 'eth0', 'a link by index');
  assert.ok((await nl.links()).some((l) => l.name === 'lxctest0' && l.ifindex === created.ifindex), 'listed');

  await nl.setLink('lxctest0', { up: true, mtu: 1300, alias: 'ciliate endpoint c1/eth0' });
  assert.equal((await nl.link('lxctest0'))?.alias, 'ciliate endpoint c1/eth0');
  await podNl.setLink(peer.ifindex, { up: true });
  const after = ipLink(host, 'lxctest0');
  assert.equal(after.mtu, 1300);
  assert.ok(after.flags.includes('UP'));
  assert.equal((await nl.link('lxctest0'))?.up, true);

  assert.equal(await nl.deleteLink('lxctest0'), true);
  assert.equal(await podNl.link('eth0'), undefined, 'the peer went with it');
  assert.equal(await nl.deleteLink('lxctest0'), false, 'deleting what is absent is false');
});

test('a link moved into another namespace and named there in one request; a link renamed with a new group and alias in one request', async (t) => {
  const host = netns(t);
  const pod = netns(t);
  const nl = open(t, host.path);
  const podNl = open(t, pod.path);
  const created = await nl.createVeth({ name: 'pool0', peerName: 'pool0p', group: 7 });
  const peer = await nl.link('pool0p');
  assert.ok(peer);
  await nl.setLink(peer.ifindex, { netns: pod.path, name: 'eth0', mtu: 1400 });
  assert.equal(await nl.link('pool0p'), undefined, 'gone from the first namespace');
  const moved = await podNl.link('eth0');
  assert.equal(moved?.mac, peer.mac, 'the same link, named eth0 in the pod');
  assert.equal(ipLink(pod, 'eth0').mtu, 1400);

  await nl.setLink(created.ifindex, { name: 'lxcnew0', group: 8, alias: 'ciliate endpoint c/eth0' });
  const renamed = await nl.link(created.ifindex);
  assert.deepEqual([renamed?.name, renamed?.group, renamed?.alias], ['lxcnew0', 8, 'ciliate endpoint c/eth0']);
  await assert.rejects(nl.setLink('lxcnew0', { name: 'other0' }), TypeError, 'a rename names the link by index');
  await assert.rejects(podNl.setLink(moved!.ifindex, { netns: '/nonexistent/netns' }), (error: unknown) => NetlinkError.is(error, 'ENOENT'));
});

test('creating a link whose name is taken fails with EEXIST, typed, and leaves the existing one alone', async (t) => {
  const ns = netns(t);
  const nl = open(t, ns.path);
  inNs(ns, ['ip', 'link', 'add', 'taken0', 'type', 'veth', 'peer', 'name', 'taken1']);
  const before = ipLink(ns, 'taken0');
  await assert.rejects(
    nl.createVeth({ name: 'taken0', peerName: 'other1' }),
    (error: unknown) => {
      assert.ok(NetlinkError.is(error, 'EEXIST'), String(error));
      assert.equal(error.code, 'ERR_NETLINK');
      assert.equal(error.errno, errnoOf('EEXIST'));
      assert.equal(error.errnoName, 'EEXIST');
      assert.match(error.message, /^creating veth taken0 \(peer other1\) in \/run\/netns\/nlt[0-9a-f]+: EEXIST/);
      return true;
    },
  );
  assert.equal(ipLink(ns, 'taken0').address, before.address);
  assert.equal(await nl.link('other1'), undefined, 'no half of a pair was left');
  await assert.rejects(nl.setLink('nosuch0', { up: true }), (error: unknown) => NetlinkError.is(error, 'ENODEV') && !NetlinkError.is(error, 'EEXIST'));
  await assert.rejects(nl.addAddress({ address: '10.9.9.9/32', dev: 'nosuch0' }), (error: unknown) => NetlinkError.is(error, 'ENODEV'));
  assert.equal(NetlinkError.is(new Error('ENODEV')), false, 'other errors are not NetlinkErrors, whatever they say');
});

test('a VXLAN device in external mode: its settings as created and as read back, mtu / arp off / up', async (t) => {
  const ns = netns(t);
  const nl = open(t, ns.path);
  const vxlan = await nl.createVxlan({ name: 'vxtest0', external: true, port: 8472 });
  assert.equal(vxlan.kind, 'vxlan');
  assert.deepEqual(vxlan.vxlan, { external: true, port: 8472 });
  const seen = ipLink(ns, 'vxtest0');
  assert.equal(seen.linkinfo?.info_kind, 'vxlan');
  assert.equal(seen.linkinfo?.info_data?.external, true);
  assert.equal(seen.linkinfo?.info_data?.port, 8472);
  await nl.setLink('vxtest0', { mtu: 1450, noarp: true, up: true });
  const link = await nl.link('vxtest0');
  assert.equal(link?.mtu, 1450);
  assert.equal(link?.noarp, true);
  assert.equal(link?.up, true);
  assert.ok(ipLink(ns, 'vxtest0').flags.includes('NOARP'));
  await nl.setLink('vxtest0', { noarp: false });
  assert.equal((await nl.link('vxtest0'))?.noarp, false);
  await assert.rejects(nl.createVxlan({ name: 'vxtest0', external: true, port: 8472 }), (error: unknown) => NetlinkError.is(error, 'EEXIST'));
});

/** A namespace with one veth end up and addressed, for routes and neighbours. */
async function routedNamespace(t: TestContext): Promise<{ ns: { name: string; path: string }; nl: Netlink }> {
  const ns = netns(t);
  const nl = open(t, ns.path);
  await nl.setLink('lo', { up: true });
  await nl.createVeth({ name: 'up0', peerName: 'up1' });
  await nl.setLink('up0', { up: true });
  await nl.setLink('up1', { up: true });
  await nl.addAddress({ address: '192.168.77.1/24', dev: 'up0' });
  await nl.addAddress({ address: '10.77.1.1/32', dev: 'up1' });
  return { ns, nl };
}

test('addresses: add, EEXIST on a second add, replace, list by device, delete', async (t) => {
  const { ns, nl } = await routedNamespace(t);
  await nl.addAddress({ address: '10.77.0.5', dev: 'up0' });
  await assert.rejects(nl.addAddress({ address: '10.77.0.5/32', dev: 'up0' }), (error: unknown) => NetlinkError.is(error, 'EEXIST'));
  await nl.replaceAddress({ address: '10.77.0.5/32', dev: 'up0' });
  const up0 = await nl.link('up0');
  const listed = await nl.addresses({ family: 4, dev: 'up0' });
  assert.deepEqual(
    listed.map((a) => `${a.address}/${a.prefixlen}`).sort(),
    ['10.77.0.5/32', '192.168.77.1/24'],
  );
  assert.ok(listed.every((a) => a.ifindex === up0?.ifindex && a.family === 4 && a.label === 'up0' && a.scope === 'universe'));
  assert.match(inNs(ns, ['ip', '-4', 'addr', 'show', 'dev', 'up0']), /inet 10\.77\.0\.5\/32/);
  assert.equal(await nl.deleteAddress({ address: '10.77.0.5/32', dev: 'up0' }), true);
  assert.equal(await nl.deleteAddress({ address: '10.77.0.5/32', dev: 'up0' }), false);
  assert.doesNotMatch(inNs(ns, ['ip', '-4', 'addr', 'show', 'dev', 'up0']), /10\.77\.0\.5/);
  // IPv6 through the same calls.
  await nl.addAddress({ address: 'fd00:77::1/64', dev: 'up0' });
  assert.ok((await nl.addresses({ family: 6, dev: 'up0' })).some((a) => a.address === 'fd00:77::1' && a.prefixlen === 64 && a.family === 6));
});

test('routes: lightweight-tunnel encap with mtu and src, via a gateway, listed by protocol, replaced, deleted', async (t) => {
  const { ns, nl } = await routedNamespace(t);
  await nl.createVxlan({ name: 'vxtest1', external: true, port: 8472 });
  await nl.setLink('vxtest1', { up: true, noarp: true });
  await nl.replaceRoute({ dst: '10.78.2.0/24', dev: 'vxtest1', encap: { id: 6, dst: '192.168.77.2', ttl: 64 }, prefsrc: '10.77.1.1', mtu: 1400, protocol: 211 });
  await nl.replaceRoute({ dst: '10.78.3.0/24', gateway: '192.168.77.3', protocol: 211 });
  await nl.replaceRoute({ dst: '10.78.4.0/24', gateway: '192.168.77.4' });

  const shown = inNs(ns, ['ip', 'route', 'show', 'proto', '211']);
  assert.match(shown, /^10\.78\.2\.0\/24 +encap ip id 6 src 0\.0\.0\.0 dst 192\.168\.77\.2 ttl 64 tos 0 dev vxtest1 scope link src 10\.77\.1\.1 mtu 1400/m);
  assert.match(shown, /^10\.78\.3\.0\/24 via 192\.168\.77\.3 dev up0/m);

  const vxtest1 = await nl.link('vxtest1');
  const ours = await nl.routes({ protocol: 211 });
  assert.deepEqual(
    ours.map((r) => r.dst).sort(),
    ['10.78.2.0/24', '10.78.3.0/24'],
    'only protocol 211',
  );
  const tunnel = ours.find((r) => r.dst === '10.78.2.0/24');
  assert.deepEqual(
    { oif: tunnel?.oif, scope: tunnel?.scope, prefsrc: tunnel?.prefsrc, mtu: tunnel?.mtu, encap: tunnel?.encap, gateway: tunnel?.gateway, table: tunnel?.table },
    { oif: vxtest1?.ifindex, scope: 'link', prefsrc: '10.77.1.1', mtu: 1400, encap: { id: 6n, dst: '192.168.77.2', ttl: 64 }, gateway: undefined, table: 254 },
  );
  assert.equal(ours.find((r) => r.dst === '10.78.3.0/24')?.gateway, '192.168.77.3');
  assert.ok((await nl.routes()).some((r) => r.dst === '10.78.4.0/24' && r.protocol === 3), 'the main table, all protocols');

  await nl.replaceRoute({ dst: '10.78.3.0/24', gateway: '192.168.77.5', protocol: 211 });
  assert.equal((await nl.routes({ protocol: 211 })).find((r) => r.dst === '10.78.3.0/24')?.gateway, '192.168.77.5', 'replaced in place');
  await assert.rejects(nl.addRoute({ dst: '10.78.3.0/24', gateway: '192.168.77.6', protocol: 211 }), (error: unknown) => NetlinkError.is(error, 'EEXIST'));

  assert.equal(await nl.deleteRoute({ dst: '10.78.3.0/24', protocol: 211 }), true);
  assert.equal(await nl.deleteRoute({ dst: '10.78.3.0/24', protocol: 211 }), false, 'absent: false');
  assert.equal(await nl.deleteRoute({ dst: '10.78.4.0/24', protocol: 211 }), false, 'another protocol\'s route is not ours to delete');
  assert.match(inNs(ns, ['ip', 'route', 'show']), /10\.78\.4\.0\/24/);
  assert.equal(await nl.deleteRoute({ dst: '10.78.2.0/24', protocol: 211 }), true);
  assert.deepEqual(await nl.routes({ protocol: 211 }), []);
  await assert.rejects(
    nl.replaceRoute({ dst: '10.78.9.0/24', gateway: '172.31.0.1' }),
    (error: unknown) => NetlinkError.is(error, 'ENETUNREACH'),
    'an unreachable gateway is refused with its errno',
  );
});

test('pod plumbing: host route scope link, gateway route, default via it, permanent neighbour', async (t) => {
  const host = netns(t);
  const pod = netns(t);
  const nl = open(t, host.path);
  const podNl = open(t, pod.path);
  const hostEnd = await nl.createVeth({ name: 'lxcpod0', peerName: 'eth0', peerNetns: pod.path });
  await nl.setLink(hostEnd.ifindex, { up: true });
  await nl.replaceRoute({ dst: '10.79.0.7/32', dev: hostEnd.ifindex, scope: 'link' });
  await podNl.setLink('lo', { up: true });
  await podNl.addAddress({ address: '10.79.0.7/32', dev: 'eth0' });
  await podNl.setLink('eth0', { up: true });
  await podNl.addRoute({ dst: '10.79.0.1/32', dev: 'eth0', scope: 'link' });
  await podNl.addRoute({ dst: 'default', gateway: '10.79.0.1', dev: 'eth0' });
  await podNl.replaceNeighbour({ dst: '10.79.0.1', lladdr: hostEnd.mac, dev: 'eth0' });

  assert.match(inNs(host, ['ip', 'route', 'show']), /^10\.79\.0\.7 dev lxcpod0 scope link/m);
  const podRoutes = inNs(pod, ['ip', 'route', 'show']);
  assert.match(podRoutes, /^default via 10\.79\.0\.1 dev eth0/m);
  assert.match(podRoutes, /^10\.79\.0\.1 dev eth0 scope link/m);
  assert.match(inNs(pod, ['ip', 'neigh', 'show', 'dev', 'eth0']), new RegExp(`^10\\.79\\.0\\.1 lladdr ${hostEnd.mac} PERMANENT`, 'm'));
  // Replacing is idempotent.
  await podNl.replaceNeighbour({ dst: '10.79.0.1', lladdr: hostEnd.mac, dev: 'eth0' });
  const routes = await podNl.routes();
  assert.ok(routes.some((r) => r.dst === '0.0.0.0/0' && r.gateway === '10.79.0.1'), 'the default route lists as 0.0.0.0/0');
});

test('a sysctl written in a namespace is that namespace\'s, not the caller\'s', async (t) => {
  const a = netns(t);
  const b = netns(t);
  const nl = open(t, a.path);
  nl.writeSysctl('net.ipv4.ip_forward', '1');
  assert.equal(inNs(a, ['cat', '/proc/sys/net/ipv4/ip_forward']).trim(), '1');
  assert.equal(inNs(b, ['sysctl', '-n', 'net.ipv4.ip_forward']).trim(), '0', 'another namespace is untouched');
  nl.writeSysctl('net.ipv4.ip_forward', '0');
  assert.equal(inNs(a, ['cat', '/proc/sys/net/ipv4/ip_forward']).trim(), '0');
  assert.throws(() => nl.writeSysctl('net.ipv4.no_such_knob', '1'), (error: unknown) => NetlinkError.is(error, 'ENOENT') && /writing sysctl net\.ipv4\.no_such_knob=1 in /.test(error.message));
});

test('address events: additions and removals in a namespace arrive, from nowhere else, until closed', async (t) => {
  const ns = netns(t);
  const other = netns(t);
  const nl = open(t, ns.path);
  const events: AddressEvent[] = [];
  const errors: unknown[] = [];
  let wake: (() => void) | undefined;
  const subscription = AddressEvents.subscribe({
    netns: ns.path,
    onEvent: (event) => {
      events.push(event);
      wake?.();
    },
    onError: (error) => errors.push(error),
  });
  t.after(() => subscription.close());
  const until = async (done: () => boolean): Promise<void> => {
    const deadline = Date.now() + 5000;
    while (!done()) {
      if (Date.now() > deadline) assert.fail(`timed out; events so far: ${JSON.stringify(events)}`);
      await new Promise<void>((resolve) => {
        wake = resolve;
        setTimeout(resolve, 100);
      });
    }
  };
  await nl.createVeth({ name: 'ev0', peerName: 'ev1' });
  const ev0 = await nl.link('ev0');
  inNs(other, ['ip', 'link', 'add', 'ev0', 'type', 'veth', 'peer', 'name', 'ev1']);
  inNs(other, ['ip', 'addr', 'add', '10.80.0.99/32', 'dev', 'ev0']);
  await nl.addAddress({ address: '10.80.0.1/24', dev: 'ev0' });
  await until(() => events.some((e) => e.type === 'added' && e.address === '10.80.0.1'));
  await nl.deleteAddress({ address: '10.80.0.1/24', dev: 'ev0' });
  await until(() => events.some((e) => e.type === 'removed' && e.address === '10.80.0.1'));
  assert.deepEqual(
    events.filter((e) => e.address === '10.80.0.1'),
    [
      { type: 'added', family: 4, address: '10.80.0.1', prefixlen: 24, ifindex: ev0?.ifindex, label: 'ev0' },
      { type: 'removed', family: 4, address: '10.80.0.1', prefixlen: 24, ifindex: ev0?.ifindex, label: 'ev0' },
    ],
  );
  assert.ok(!events.some((e) => e.address === '10.80.0.99'), 'another namespace\'s addresses are not reported');
  assert.deepEqual(errors, []);
  subscription.close();
  const count = events.length;
  await nl.addAddress({ address: '10.80.0.2/32', dev: 'ev0' });
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.equal(events.length, count, 'nothing after close()');
});

test('many requests at once on one socket each get their own answer', async (t) => {
  const ns = netns(t);
  const nl = open(t, ns.path);
  await nl.createVeth({ name: 'many0', peerName: 'many1' });
  const results = await Promise.allSettled(
    Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? nl.addAddress({ address: `10.81.0.${i}/32`, dev: 'many0' }) : nl.setLink('nosuch', { up: true }))),
  );
  results.forEach((result, i) => {
    if (i % 2 === 0) assert.equal(result.status, 'fulfilled', `request ${i}`);
    else assert.ok(result.status === 'rejected' && NetlinkError.is(result.reason, 'ENODEV'), `request ${i}`);
  });
  assert.equal((await nl.addresses({ dev: 'many0' })).length, 10);
});

test('tc: clsact bound to shared blocks and direct-action bpf filters on them, as tc sees them; listing and deleting what is not there', async (t) => {
  const ns = netns(t);
  const nl = open(t, ns.path);
  const programs = loadLxc();
  t.after(() => programs.close());
  const a = await nl.createVeth({ name: 'blk0', peerName: 'blk0p' });
  assert.deepEqual(await nl.bpfFilters(4242), [], 'no qdisc holds block 4242 yet: no filters, no error');
  assert.equal(await nl.deleteClsact(a.ifindex), false);
  await nl.addClsact(a.ifindex, { ingressBlock: 4242, egressBlock: 4243 });
  await assert.rejects(nl.addClsact(a.ifindex, { ingressBlock: 4242, egressBlock: 4243 }), (error: unknown) => NetlinkError.is(error, 'EEXIST'));
  const program = programs.program(LxcProgram.FROM_CONTAINER);
  await nl.replaceBpfFilter({ block: 4242, priority: 1, handle: 1, programFd: program.fd, name: 'from-container' });
  await nl.replaceBpfFilter({ block: 4242, priority: 1, handle: 1, programFd: program.fd, name: 'from-container' });
  const [filter, ...more] = await nl.bpfFilters(4242);
  assert.deepEqual(more, [], 'replacing the same priority and handle leaves one filter');
  assert.deepEqual({ ...filter, programId: undefined }, { block: 4242, priority: 1, handle: 1, programId: undefined, name: 'from-container', tag: program.info().tag, directAction: true });
  assert.equal(filter.programId, program.info().id);
  assert.match(inNs(ns, ['tc', 'filter', 'show', 'block', '4242']), /bpf .*from-container.*direct-action/, 'tc sees the filter');
  assert.match(inNs(ns, ['tc', 'qdisc', 'show', 'dev', 'blk0']), /clsact.*ingress_block 4242 egress_block 4243/);
  assert.deepEqual((await nl.clsacts()).filter((c) => c.ifindex === a.ifindex), [{ ifindex: a.ifindex, ingressBlock: 4242, egressBlock: 4243 }]);
  assert.equal(await nl.deleteBpfFilter({ block: 4242, priority: 1, handle: 1 }), true);
  assert.equal(await nl.deleteBpfFilter({ block: 4242, priority: 1, handle: 1 }), false);
  assert.equal(await nl.deleteClsact(a.ifindex), true);
  assert.deepEqual(await nl.clsacts(), []);
});
