/**
 * Ingress policy in cil_from_overlay with real VXLAN traffic: a "node" namespace with a pod and a
 * collect_md VXLAN device carrying bpf_overlay.o, and a "remote" namespace sending to the pod
 * through its own collect_md VXLAN device with a VNI of 30009 (the sender's identity, as
 * bpf_lxc would put it). The pod's policy map decides with that identity.
 * Needs root and `bash scripts/build-bpf.sh`.
 * @module
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { RingBuffer, attachTcx, inNetns, namedNetns, type BpfObject, type Link } from '../ebpf/index.ts';
import { ip, ipIn, pinDir, run, uniqueId } from '../ebpf/internal/testutils.ts';
import { PolicyDirection, type PolicyMapEntry } from '../policy/policy-map.ts';
import { decodeEvent, type DatapathEvent, type DropEvent, type PolicyVerdictEvent } from './events.ts';
import { LxcProgram, loadLxc, lxcMaps } from './lxc.ts';
import { IpcacheFlag, RoutingModeCode } from './maps.ts';
import { OverlayProgram, loadOverlay } from './overlay.ts';
import { EndpointPolicyMaps } from './policy-maps.ts';

const GATEWAY = '169.254.1.1';
const POD_IP = '10.244.0.30';
const REMOTE_IP = '10.244.9.9';
const REMOTE_IDENTITY = 30009;
const POD = { id: 300, identity: 30300 };
const NODE_UNDERLAY = '192.168.77.1';
const REMOTE_UNDERLAY = '192.168.77.2';

function linkJson(netns: string, dev: string): { ifindex: number; address: string } {
  return (JSON.parse(run('ip', ['-n', netns, '-j', 'link', 'show', 'dev', dev])) as { ifindex: number; address: string }[])[0];
}

function pings(netns: string, to: string, count: number): boolean {
  try {
    run('ip', ['netns', 'exec', netns, 'ping', '-c', String(count), '-i', '0.2', '-W', '1', to]);
    return true;
  } catch {
    return false;
  }
}

function allow(identity: number, direction: PolicyDirection, cookie: number, l4?: { protocol: number; port: number }): PolicyMapEntry {
  return { key: { identity, direction, protocol: l4?.protocol ?? 0, port: l4?.port ?? 0, prefixLen: l4 ? 64 : 40 }, deny: false, cookie, ruleKeys: [] };
}

function namespaces(t: TestContext): { node: string; remote: string; pod: string } {
  const id = uniqueId();
  const ns = { node: `cop-n-${id}`, remote: `cop-r-${id}`, pod: `cop-p-${id}` };
  t.after(() => {
    for (const name of Object.values(ns)) {
      try {
        ip('netns', 'del', name);
      } catch {
        // never created
      }
    }
  });
  for (const name of Object.values(ns)) {
    ip('netns', 'add', name);
    ipIn(name, 'link', 'set', 'lo', 'up');
    // Pods have no IPv6: as the agent does for its pods, no IPv6 on their links (bpf_lxc drops it).
    run('ip', ['netns', 'exec', name, 'sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1']);
  }
  // Underlay.
  ip('link', 'add', `cou${id}`, 'type', 'veth', 'peer', 'name', `cov${id}`);
  ip('link', 'set', `cou${id}`, 'netns', ns.node, 'name', 'u0');
  ip('link', 'set', `cov${id}`, 'netns', ns.remote, 'name', 'u0');
  for (const [name, addr] of [[ns.node, NODE_UNDERLAY], [ns.remote, REMOTE_UNDERLAY]] as const) {
    ipIn(name, 'addr', 'add', `${addr}/24`, 'dev', 'u0');
    ipIn(name, 'link', 'set', 'u0', 'up');
    ipIn(name, 'link', 'add', 'cvx', 'type', 'vxlan', 'external', 'dstport', '4789');
    ipIn(name, 'link', 'set', 'cvx', 'up');
  }
  // The remote's pod address, reached by the node's pod through the tunnel.
  ipIn(ns.remote, 'addr', 'add', `${REMOTE_IP}/32`, 'dev', 'lo');
  ipIn(ns.remote, 'route', 'add', `${POD_IP}/32`, 'encap', 'ip', 'id', String(REMOTE_IDENTITY), 'dst', NODE_UNDERLAY, 'dev', 'cvx', 'src', REMOTE_IP);
  ipIn(ns.remote, 'neigh', 'add', POD_IP, 'lladdr', '02:00:00:00:00:01', 'dev', 'cvx', 'nud', 'permanent');
  // The pod.
  ip('link', 'add', `coh${id}`, 'type', 'veth', 'peer', 'name', `cop${id}`);
  ip('link', 'set', `coh${id}`, 'netns', ns.node, 'name', 'lxc0');
  ip('link', 'set', `cop${id}`, 'netns', ns.pod, 'name', 'eth0');
  ipIn(ns.node, 'link', 'set', 'lxc0', 'up');
  ipIn(ns.pod, 'link', 'set', 'eth0', 'up');
  ipIn(ns.pod, 'addr', 'add', `${POD_IP}/32`, 'dev', 'eth0');
  ipIn(ns.pod, 'route', 'add', GATEWAY, 'dev', 'eth0', 'scope', 'link');
  ipIn(ns.pod, 'route', 'add', 'default', 'via', GATEWAY, 'dev', 'eth0');
  ipIn(ns.pod, 'neigh', 'add', GATEWAY, 'lladdr', linkJson(ns.node, 'lxc0').address, 'dev', 'eth0', 'nud', 'permanent');
  return ns;
}

test('cil_from_overlay enforces the destination pod\'s ingress policy with the identity from the VNI', (t) => {
  const ns = namespaces(t);
  const root = pinDir(t);
  const mapsDir = join(root, 'maps');
  mkdirSync(mapsDir);
  const objects: BpfObject[] = [];
  const links: Link[] = [];
  let ring: RingBuffer | undefined;
  let policy: EndpointPolicyMaps | undefined;
  t.after(() => {
    for (const link of links) link.close();
    ring?.close();
    policy?.close();
    for (const obj of objects) obj.close();
  });

  const lxc = loadLxc({ pinDir: mapsDir });
  objects.push(lxc);
  const maps = lxcMaps(lxc);
  policy = new EndpointPolicyMaps(root);
  const RULE = 301;
  policy.apply(POD.id, { upserts: [allow(0, PolicyDirection.EGRESS, 0), allow(REMOTE_IDENTITY, PolicyDirection.INGRESS, RULE, { protocol: 1, port: 8 })], deletes: [] });

  const host = linkJson(ns.node, 'lxc0');
  const tunnel = linkJson(ns.node, 'cvx');
  maps.lxc.update({ ip: POD_IP }, { ifindex: host.ifindex, lxc_id: POD.id, flags: 0, mac: linkJson(ns.pod, 'eth0').address, node_mac: host.address, sec_identity: POD.identity });
  maps.ipcache.update({ prefixlen: 32, ip: REMOTE_IP }, { sec_identity: REMOTE_IDENTITY, tunnel_endpoint: REMOTE_UNDERLAY, flags: IpcacheFlag.HAS_TUNNEL_EP });
  maps.nodeCfg.update(0, { tunnel_ifindex: tunnel.ifindex, routing_mode: RoutingModeCode.TUNNEL, native_cidr: '0.0.0.0', native_cidr_prefixlen: 0 });
  const overlay = loadOverlay({ pinDir: mapsDir });
  objects.push(overlay);
  // The remote's own overlay program (private maps): accepts the replies, whatever their inner MAC.
  const remoteOverlay = loadOverlay();
  objects.push(remoteOverlay);
  inNetns(namedNetns(ns.node), () => {
    links.push(attachTcx(lxc.program(LxcProgram.FROM_CONTAINER), { interface: 'lxc0', direction: 'ingress' }));
    links.push(attachTcx(lxc.program(LxcProgram.TO_CONTAINER), { interface: 'lxc0', direction: 'egress' }));
    links.push(attachTcx(overlay.program(OverlayProgram.FROM_OVERLAY), { interface: 'cvx', direction: 'ingress' }));
  });
  inNetns(namedNetns(ns.remote), () => {
    links.push(attachTcx(remoteOverlay.program(OverlayProgram.FROM_OVERLAY), { interface: 'cvx', direction: 'ingress' }));
  });
  ring = new RingBuffer(maps.events, { lostCounter: maps.eventsLost });
  const consume = (): DatapathEvent[] => {
    const events: DatapathEvent[] = [];
    ring!.consume((_view, offset, length, bytes) => void events.push(decodeEvent(bytes, offset, length)));
    return events;
  };

  assert.equal(pings(ns.remote, POD_IP, 3), true, 'allowed: remote identity 30009 may ping the pod, and the replies go back through the tunnel');
  let events = consume();
  let verdicts = events.filter((e): e is PolicyVerdictEvent => e.kind === 'policy-verdict' && e.directionName === 'ingress');
  assert.equal(verdicts.length, 1, 'one new connection judged');
  assert.deepEqual(
    [verdicts[0].endpointId, verdicts[0].remoteIdentity, verdicts[0].allowed, verdicts[0].cookie, verdicts[0].matchName, verdicts[0].source, verdicts[0].ingress],
    [POD.id, REMOTE_IDENTITY, true, RULE, 'L3-L4', 0, true],
  );
  assert.deepEqual(events.filter((e) => e.kind === 'drop'), []);

  // Withdraw the rule: the next ping (a new echo id, so a new connection) is dropped at the overlay.
  policy.apply(POD.id, { upserts: [], deletes: [allow(REMOTE_IDENTITY, PolicyDirection.INGRESS, RULE, { protocol: 1, port: 8 }).key] });
  assert.equal(pings(ns.remote, POD_IP, 1), false);
  events = consume();
  verdicts = events.filter((e): e is PolicyVerdictEvent => e.kind === 'policy-verdict');
  const drops = events.filter((e): e is DropEvent => e.kind === 'drop');
  assert.ok(verdicts.length >= 1 && verdicts.every((v) => !v.allowed && v.remoteIdentity === REMOTE_IDENTITY && v.endpointId === POD.id));
  assert.ok(drops.length >= 1 && drops.every((d) => d.reason === 133 && d.srcIdentity === REMOTE_IDENTITY && d.dstId === POD.id));
});
