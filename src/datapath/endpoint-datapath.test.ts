/**
 * EndpointDatapath on the real kernel: the node's one load of bpf_lxc attached to pods' host
 * veths (in a node namespace), the endpoint map entries that make it serve them, identity changes,
 * removal, and what a restarted agent does with the links a previous one pinned.
 * @module
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { inNetns, Link, namedNetns, Program, queryTcx } from '../ebpf/index.ts';
import { pinDir, ping } from '../ebpf/internal/testutils.ts';
import { EndpointDatapath, TC_BLOCKS, type AttachMode, type DatapathEndpoint } from './endpoint-datapath.ts';
import { Netlink } from './netlink/index.ts';
import { LxcProgram, loadLxc } from './lxc.ts';
import { loadOverlay, OverlayProgram } from './overlay.ts';
import { podTopology, type Pod } from './testutils.ts';

const log = pino({ level: 'silent' });

function setup(t: TestContext, prefix: string): { node: string; pods: Pod[]; root: string; open(attach?: AttachMode): EndpointDatapath } {
  const { node, pods } = podTopology(t, { count: 2, prefix, firstHost: 30, firstId: 300, firstIdentity: 40000 });
  const root = join(pinDir(t), 'root');
  mkdirSync(root);
  const opened: EndpointDatapath[] = [];
  t.after(() => {
    for (const datapath of opened) datapath.close();
  });
  const open = (attach: AttachMode = 'tcx') => {
    const datapath = new EndpointDatapath(root, log, { netns: namedNetns(node), attach });
    opened.push(datapath);
    return datapath;
  };
  return { node, pods, root, open };
}

function endpointOf(pod: Pod): DatapathEndpoint {
  return { id: pod.id, ipv4: pod.ip, mac: pod.podMac, hostIfname: pod.hostIf, hostIfindex: pod.hostIfindex, hostMac: pod.hostMac, identity: pod.identity };
}

function links(root: string, id: number): Link[] {
  return ['from-container', 'to-container'].map((pin) => Link.openPinned(join(root, 'endpoints', String(id), pin)));
}

test('tcx: realize serves pods with one load of the programs; a new identity rewrites only the map entry; remove leaves nothing', async (t) => {
  const { node, pods, root, open } = setup(t, 'cdr');
  const datapath = open();
  const [a, b] = pods;
  await Promise.all(pods.map((pod) => datapath.realize(endpointOf(pod))));
  assert.ok(ping(a.netns, b.ip, 2), 'the pods reach each other');

  const [la, lb] = [links(root, a.id), links(root, b.id)];
  t.after(() => [...la, ...lb].forEach((link) => link.close()));
  assert.deepEqual(la.map((l) => l.info().ifindex), [a.hostIfindex, a.hostIfindex]);
  assert.deepEqual(lb.map((l) => l.info().ifindex), [b.hostIfindex, b.hostIfindex]);
  assert.deepEqual(la.map((l) => l.info().programId), lb.map((l) => l.info().programId), 'both pods run the same two programs');
  assert.equal(datapath.lxcIfindex.lookup(a.hostIfindex)?.ip, a.ip);
  const observed = new Map(await datapath.observe());
  assert.equal(datapath.serves(endpointOf(a), observed.get(a.ip)!), true);

  const linkIds = la.map((l) => l.info().id);
  const programIds = la.map((l) => l.info().programId);
  await datapath.realize({ ...endpointOf(a), identity: 40999 });
  assert.equal(datapath.lxc.lookup({ ip: a.ip })?.sec_identity, 40999);
  assert.deepEqual(la.map((l) => l.info().id), linkIds, 'the same links');
  assert.deepEqual(la.map((l) => l.info().programId), programIds, 'running the same programs');
  assert.equal(datapath.serves(endpointOf(a), new Map(await datapath.observe()).get(a.ip)!), false, 'the old identity is no longer what is served');
  assert.ok(ping(a.netns, b.ip, 1), 'traffic goes on');

  await datapath.remove({ ...endpointOf(a), identity: 40999 });
  assert.equal(existsSync(join(root, 'endpoints', String(a.id))), false, 'no pins, no directory');
  assert.equal(datapath.lxc.lookup({ ip: a.ip }), undefined);
  assert.equal(datapath.lxcIfindex.lookup(a.hostIfindex), undefined);
  for (const direction of ['ingress', 'egress'] as const) {
    assert.deepEqual(inNetns(namedNetns(node), () => queryTcx(a.hostIf, direction).linkIds), [], `nothing attached at ${direction} any more`);
  }
});

test('tcx: attached but without its entries an endpoint passes nothing; detach undoes attach', async (t) => {
  const { pods, root, open } = setup(t, 'cda');
  const datapath = open();
  const [a, b] = pods;
  await datapath.realize(endpointOf(b));
  await datapath.attach({ id: a.id, hostIfindex: a.hostIfindex });
  assert.ok(existsSync(join(root, 'endpoints', String(a.id), 'from-container')));
  assert.equal(ping(a.netns, b.ip, 1), false, 'nothing leaves a pod whose entry is not written');
  assert.equal(ping(b.netns, a.ip, 1), false, 'nothing reaches it either');
  await datapath.detach(a.id);
  assert.equal(existsSync(join(root, 'endpoints', String(a.id))), false);
});

test('tcx: a restarted datapath adopts pinned links, and swaps a program of another build in place', async (t) => {
  const { pods, root, open } = setup(t, 'cdp');
  const [a, b] = pods;
  const first = open();
  await Promise.all(pods.map((pod) => first.realize(endpointOf(pod))));
  const before = links(root, a.id);
  t.after(() => before.forEach((link) => link.close()));
  const [fromId, toId] = before.map((l) => l.info().id);
  const toProgram = before[1].info().programId;
  // An older build's program on a's ingress link: any other tc program stands in for it.
  const overlay = loadOverlay();
  t.after(() => overlay.close());
  before[0].update(overlay.program(OverlayProgram.FROM_OVERLAY));
  first.close();

  const second = open();
  await Promise.all(pods.map((pod) => second.realize(endpointOf(pod))));
  assert.deepEqual(before.map((l) => l.info().id), [fromId, toId], 'the pinned links were adopted, not attached again');
  const fresh = loadLxc();
  t.after(() => fresh.close());
  using running = Program.fromId(before[0].info().programId);
  assert.equal(running.info().tag, fresh.program(LxcProgram.FROM_CONTAINER).info().tag, "the other build's program was swapped for this build's");
  assert.equal(before[1].info().programId, toProgram, "a program of this build stays (the first load's)");
  assert.ok(ping(a.netns, b.ip, 2), 'the pods reach each other');
});

test('tcx: a pool link: attached and pinned under the pool ahead of its endpoint; adopting it moves the pins and realize attaches nothing more', async (t) => {
  const { pods, root, open } = setup(t, 'cdp');
  const datapath = open();
  const [a, b] = pods;
  await datapath.attachPooled('lxcptest', a.hostIfindex);
  assert.equal(datapath.servesPooled('lxcptest', a.hostIfindex), true);
  assert.equal(datapath.servesPooled('lxcptest', b.hostIfindex), false, 'pool pins name their own interface');
  assert.deepEqual(datapath.pooled(), ['lxcptest']);
  assert.equal(ping(a.netns, b.ip, 1), false, 'no entry: the pool link passes nothing');
  const before = ['from-container', 'to-container'].map((pin) => {
    using link = Link.openPinned(join(root, 'pool', 'lxcptest', pin));
    return link.info().id;
  });

  assert.throws(() => datapath.adoptPooled('lxcptest', { id: a.id, hostIfindex: b.hostIfindex }), /has no links pinned for interface/);
  datapath.adoptPooled('lxcptest', { id: a.id, hostIfindex: a.hostIfindex });
  assert.deepEqual(datapath.pooled(), [], 'nothing left under the pool');
  const la = links(root, a.id);
  t.after(() => la.forEach((link) => link.close()));
  assert.deepEqual(la.map((l) => l.info().id), before, 'the same links, now the endpoint\'s');
  await Promise.all(pods.map((pod) => datapath.realize(endpointOf(pod))));
  assert.deepEqual(la.map((l) => l.info().id), before, 'realize kept them');
  assert.ok(ping(a.netns, b.ip, 2), 'and the pod is served');

  await datapath.attachPooled('lxcpgone', b.hostIfindex + 1000).catch(() => undefined);
  await datapath.removePooled('lxcpgone');
  assert.deepEqual(datapath.pooled(), [], 'removePooled leaves no directory');
});

/** The node namespace's view of tc-block attachments: interfaces bound to the blocks, and the blocks' filters. */
async function tcBlocks(t: TestContext, node: string): Promise<{ bound: Set<number>; tags: (string | undefined)[]; filters: number }> {
  const nl = Netlink.open({ netns: namedNetns(node) });
  t.after(() => nl.close());
  const bound = new Set((await nl.clsacts()).filter((c) => c.ingressBlock === TC_BLOCKS.ingress && c.egressBlock === TC_BLOCKS.egress).map((c) => c.ifindex));
  const ingress = await nl.bpfFilters(TC_BLOCKS.ingress);
  const egress = await nl.bpfFilters(TC_BLOCKS.egress);
  return { bound, tags: [ingress[0]?.tag, egress[0]?.tag], filters: ingress.length + egress.length };
}

function tcxLinks(node: string, ifname: string): number[] {
  return (['ingress', 'egress'] as const).flatMap((direction) => inNetns(namedNetns(node), () => queryTcx(ifname, direction).linkIds));
}

test('tc-block: realize serves pods through the node\'s two shared blocks (one filter each, whatever the pods); remove unbinds', async (t) => {
  const { node, pods, root, open } = setup(t, 'cdb');
  const datapath = open('tc-block');
  const [a, b] = pods;
  await Promise.all(pods.map((pod) => datapath.realize(endpointOf(pod))));
  assert.ok(ping(a.netns, b.ip, 2), 'the pods reach each other');
  const fresh = loadLxc();
  t.after(() => fresh.close());
  const blocks = await tcBlocks(t, node);
  assert.ok(blocks.bound.has(a.hostIfindex) && blocks.bound.has(b.hostIfindex), 'both host veths are bound to the blocks');
  assert.equal(blocks.filters, 2, 'one filter per block');
  assert.deepEqual(blocks.tags, [fresh.program(LxcProgram.FROM_CONTAINER).info().tag, fresh.program(LxcProgram.TO_CONTAINER).info().tag]);
  assert.deepEqual(tcxLinks(node, a.hostIf), [], 'no TCX links: one mode at a time');
  assert.equal(existsSync(join(root, 'endpoints', String(a.id), 'from-container')), false, 'nothing pinned per endpoint');
  assert.equal(datapath.serves(endpointOf(a), new Map(await datapath.observe()).get(a.ip)!), true);

  await datapath.realize({ ...endpointOf(a), identity: 40999 });
  assert.equal(datapath.lxc.lookup({ ip: a.ip })?.sec_identity, 40999);
  assert.ok(ping(a.netns, b.ip, 1), 'traffic goes on');

  await datapath.remove({ ...endpointOf(a), identity: 40999 });
  assert.equal((await tcBlocks(t, node)).bound.has(a.hostIfindex), false, 'a is unbound');
  assert.equal(datapath.lxc.lookup({ ip: a.ip }), undefined);
  assert.equal(datapath.lxcIfindex.lookup(a.hostIfindex), undefined);
  assert.equal(datapath.serves(endpointOf(b), new Map(await datapath.observe()).get(b.ip)!), true, 'b still served');
});

test('tc-block: attached but without its entries an endpoint passes nothing; an unbound interface is observed and repaired', async (t) => {
  const { node, pods, open } = setup(t, 'cdk');
  const datapath = open('tc-block');
  const [a, b] = pods;
  await datapath.realize(endpointOf(b));
  await datapath.attach({ id: a.id, hostIfindex: a.hostIfindex });
  assert.equal(ping(a.netns, b.ip, 1), false, 'nothing leaves a pod whose entry is not written');
  assert.equal(ping(b.netns, a.ip, 1), false, 'nothing reaches it either');
  await datapath.realize(endpointOf(a));
  assert.ok(ping(a.netns, b.ip, 1));

  // Drift: someone deletes a's qdisc. A refresh sees it, realize binds it again.
  const nl = Netlink.open({ netns: namedNetns(node) });
  t.after(() => nl.close());
  assert.equal(await nl.deleteClsact(a.hostIfindex), true);
  assert.equal(datapath.serves(endpointOf(a), new Map(await datapath.observe()).get(a.ip)!), false, 'an unbound interface is not served');
  await datapath.realize(endpointOf(a));
  assert.equal(datapath.serves(endpointOf(a), new Map(await datapath.observe()).get(a.ip)!), true);
  assert.ok(ping(a.netns, b.ip, 1));
});

test('tc-block: a restarted agent keeps the blocks, swaps another build\'s program on them, and converts endpoints between modes', async (t) => {
  const { node, pods, root, open } = setup(t, 'cdm');
  const [a, b] = pods;
  const tcx = open('tcx');
  await Promise.all(pods.map((pod) => tcx.realize(endpointOf(pod))));
  tcx.close();

  const block = open('tc-block');
  await Promise.all(pods.map((pod) => block.realize(endpointOf(pod))));
  assert.deepEqual(tcxLinks(node, a.hostIf), [], 'the tcx links of a tcx agent are gone');
  assert.equal(existsSync(join(root, 'endpoints', String(a.id), 'from-container')), false, 'and their pins');
  assert.ok((await tcBlocks(t, node)).bound.has(a.hostIfindex));
  assert.ok(ping(a.netns, b.ip, 2), 'the pods reach each other');

  // An older build's program on the ingress block: any other tc program stands in for it.
  const overlay = loadOverlay();
  t.after(() => overlay.close());
  const nl = Netlink.open({ netns: namedNetns(node) });
  t.after(() => nl.close());
  await nl.replaceBpfFilter({ block: TC_BLOCKS.ingress, priority: 1, handle: 1, programFd: overlay.program(OverlayProgram.FROM_OVERLAY).fd, name: 'old' });
  block.close();
  const restarted = open('tc-block');
  await Promise.all(pods.map((pod) => restarted.realize(endpointOf(pod))));
  const fresh = loadLxc();
  t.after(() => fresh.close());
  assert.equal((await tcBlocks(t, node)).tags[0], fresh.program(LxcProgram.FROM_CONTAINER).info().tag, "the other build's program was swapped for this build's");
  assert.ok(ping(a.netns, b.ip, 2));
  restarted.close();

  const back = open('tcx');
  await Promise.all(pods.map((pod) => back.realize(endpointOf(pod))));
  assert.equal((await tcBlocks(t, node)).bound.has(a.hostIfindex), false, 'a tcx agent unbinds the blocks');
  assert.equal(tcxLinks(node, a.hostIf).length, 2);
  assert.ok(ping(a.netns, b.ip, 2));
});

test('tc-block: a pool link is bound ahead of its endpoint; adopting it binds nothing more', async (t) => {
  const { node, pods, open } = setup(t, 'cdq');
  const datapath = open('tc-block');
  const [a, b] = pods;
  await datapath.attachPooled('lxcptest', a.hostIfindex);
  assert.equal(datapath.servesPooled('lxcptest', a.hostIfindex), true);
  assert.equal(datapath.servesPooled('lxcptest', b.hostIfindex), false);
  assert.deepEqual(datapath.pooled(), ['lxcptest']);
  assert.equal(ping(a.netns, b.ip, 1), false, 'no entry: the pool link passes nothing');
  assert.throws(() => datapath.adoptPooled('lxcptest', { id: a.id, hostIfindex: b.hostIfindex }), /has no links pinned for interface/);
  datapath.adoptPooled('lxcptest', { id: a.id, hostIfindex: a.hostIfindex });
  assert.deepEqual(datapath.pooled(), []);
  await Promise.all(pods.map((pod) => datapath.realize(endpointOf(pod))));
  assert.ok(ping(a.netns, b.ip, 2), 'the pod is served');
  assert.ok((await tcBlocks(t, node)).bound.has(a.hostIfindex));
});
