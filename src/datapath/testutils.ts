/**
 * Test fixtures for the endpoint datapath without an agent: a node namespace and pod namespaces
 * joined by veth pairs the way the endpoint manager joins them (a /32 address, one link-local
 * gateway answered by a static neighbour entry, a /32 route on the node), built with `ip`.
 * Everything is removed when the test ends, pass or fail.
 * @module
 */
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { attachTcx, Btf, inNetns, namedNetns, type BpfObject, type Link } from '../ebpf/index.ts';
import { ip, ipIn, run, uniqueId } from '../ebpf/internal/testutils.ts';
import { LXC_OBJECT_PATH, LxcProgram, lxcMaps } from './lxc.ts';

/** Gateway address every pod routes through: link-local, answered by a static neighbour entry. */
export const GATEWAY = '169.254.1.1';

export interface Pod {
  netns: string;
  ip: string;
  /** Host-side veth, in the node namespace. */
  hostIf: string;
  hostIfindex: number;
  hostMac: string;
  podMac: string;
  id: number;
  identity: number;
}

export interface LinkJson {
  ifindex: number;
  address: string;
  stats64?: { tx: { packets: number } };
}

export function linkJson(netns: string, dev: string, stats = false): LinkJson {
  const out = run('ip', ['-n', netns, '-j', ...(stats ? ['-s'] : []), 'link', 'show', 'dev', dev]);
  return (JSON.parse(out) as LinkJson[])[0];
}

export interface TopologyOptions {
  /** Pods to create. */
  count: number;
  /** Names start with it: namespaces `<prefix>-node-<id>`, `<prefix>-p<i>-<id>`. */
  prefix: string;
  /** Pod i gets 10.244.0.<firstHost + i>, endpoint id firstId + i and identity firstIdentity + i. */
  firstHost: number;
  firstId: number;
  firstIdentity: number;
}

/** A node namespace with `count` pods; no programs attached yet. */
export function podTopology(t: TestContext, options: TopologyOptions): { node: string; pods: Pod[] } {
  const id = uniqueId();
  const node = `${options.prefix}-node-${id}`;
  const names = Array.from({ length: options.count }, (_, i) => `${options.prefix}-p${i}-${id}`);
  t.after(() => {
    // Deleting a namespace deletes the veth ends inside it, and with them their peers.
    for (const ns of [...names, node]) {
      try {
        ip('netns', 'del', ns);
      } catch {
        // never created, or already gone
      }
    }
  });
  for (const ns of [node, ...names]) {
    ip('netns', 'add', ns);
    ipIn(ns, 'link', 'set', 'lo', 'up');
    // Pods have no IPv6: as the agent does for its pods, no IPv6 on their links (bpf_lxc drops it).
    run('ip', ['netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1']);
  }
  run('ip', ['netns', 'exec', node, 'sysctl', '-qw', 'net.ipv4.ip_forward=1']);
  const pods = names.map((netns, i): Pod => {
    const hostIf = `lxc${i}`;
    const podIp = `10.244.0.${options.firstHost + i}`;
    const tmpHost = `${options.prefix[0]}h${id}${i}`;
    const tmpPod = `${options.prefix[0]}p${id}${i}`;
    ip('link', 'add', tmpHost, 'type', 'veth', 'peer', 'name', tmpPod);
    ip('link', 'set', tmpHost, 'netns', node, 'name', hostIf);
    ip('link', 'set', tmpPod, 'netns', netns, 'name', 'eth0');
    ipIn(node, 'link', 'set', hostIf, 'up');
    ipIn(netns, 'link', 'set', 'eth0', 'up');
    ipIn(netns, 'addr', 'add', `${podIp}/32`, 'dev', 'eth0');
    const host = linkJson(node, hostIf);
    // The pod reaches everything through one gateway whose MAC is its host veth's, as in Cilium.
    ipIn(netns, 'route', 'add', GATEWAY, 'dev', 'eth0', 'scope', 'link');
    ipIn(netns, 'route', 'add', 'default', 'via', GATEWAY, 'dev', 'eth0');
    ipIn(netns, 'neigh', 'add', GATEWAY, 'lladdr', host.address, 'dev', 'eth0', 'nud', 'permanent');
    // The node routes each pod's /32 to its veth: the path packets take without our programs.
    ipIn(node, 'route', 'add', `${podIp}/32`, 'dev', hostIf);
    return {
      netns,
      ip: podIp,
      hostIf,
      hostIfindex: host.ifindex,
      hostMac: host.address,
      podMac: linkJson(netns, 'eth0').address,
      id: options.firstId + i,
      identity: options.firstIdentity + i,
    };
  });
  return { node, pods };
}

/**
 * Serves the pod with the node's load of bpf_lxc.o (`obj`): writes its endpoint map entries and
 * attaches both programs to its host veth; the links go to `links`, for the caller to close.
 */
export function attachPod(pod: Pod, node: string, obj: BpfObject, links: Link[]): void {
  const maps = lxcMaps(obj);
  maps.lxc.update(
    { ip: pod.ip },
    { ifindex: pod.hostIfindex, lxc_id: pod.id, flags: 0, mac: pod.podMac, node_mac: pod.hostMac, sec_identity: pod.identity },
  );
  maps.lxcIfindex.update(pod.hostIfindex, { ip: pod.ip });
  inNetns(namedNetns(node), () => {
    links.push(attachTcx(obj.program(LxcProgram.FROM_CONTAINER), { interface: pod.hostIf, direction: 'ingress' }));
    links.push(attachTcx(obj.program(LxcProgram.TO_CONTAINER), { interface: pod.hostIf, direction: 'egress' }));
  });
}

/**
 * Interfaces for BPF_PROG_TEST_RUN. bpf_lxc finds an endpoint by the interface a packet is on
 * (skb->ifindex), and a test run puts a packet on an interface only if one of that index exists
 * in the caller's namespace: this makes a fresh namespace with an interface of each index,
 * removed at test end. Run programs in it (inNetns) with skbOnInterface() as their context.
 */
export function testRunInterfaces(t: TestContext, ifindexes: readonly number[]): string {
  const name = `ctr-${uniqueId()}`;
  t.after(() => {
    try {
      ip('netns', 'del', name);
    } catch {
      // never created
    }
  });
  ip('netns', 'add', name);
  // veth pairs: this kernel has no dummy interfaces. Both ends get their index, so that the
  // kernel's choice for a peer cannot take one of those asked for.
  ifindexes.forEach((ifindex, i) =>
    ipIn(name, 'link', 'add', `d${i}`, 'index', String(ifindex), 'type', 'veth', 'peer', 'name', `p${i}`, 'index', String(ifindex + 1000)),
  );
  return namedNetns(name);
}

let skbLayout: { size: number; ifindex: number; mark: number } | undefined;

function skbFields(): { size: number; ifindex: number; mark: number } {
  if (!skbLayout) {
    const layout = Btf.fromElf(LXC_OBJECT_PATH).structLayout('__sk_buff');
    const offset = (name: string): number => {
      const member = layout.members.find((m) => m.name === name);
      assert.ok(member, `struct __sk_buff has a ${name}`);
      return member.offset;
    };
    skbLayout = { size: layout.size, ifindex: offset('ifindex'), mark: offset('mark') };
  }
  return skbLayout;
}

/** A struct __sk_buff for BPF_PROG_TEST_RUN that puts the packet on interface `ifindex`, with skb->mark `mark`. */
export function skbOnInterface(ifindex: number, mark = 0): Buffer {
  const fields = skbFields();
  const ctx = Buffer.alloc(fields.size);
  ctx.writeUInt32LE(ifindex, fields.ifindex);
  ctx.writeUInt32LE(mark >>> 0, fields.mark);
  return ctx;
}

/** skb->mark of a struct __sk_buff BPF_PROG_TEST_RUN gave back. */
export function skbMark(ctx: Buffer | undefined): number {
  assert.ok(ctx, 'the run gave its context back');
  return ctx.readUInt32LE(skbFields().mark);
}
