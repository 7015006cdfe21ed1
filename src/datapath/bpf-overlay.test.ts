/**
 * The tunnel paths of the datapath without any network, through BPF_PROG_TEST_RUN: bpf_lxc
 * encapsulating towards another node (set tunnel key, redirect to the VXLAN device, to-overlay)
 * or dropping when the node has no tunnel device, and the node config codec against the BTF.
 * The paths through a real VXLAN device are test/multinode-datapath.test.ts's. Needs root and
 * `bash scripts/build-bpf.sh`.
 * @module
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { Btf, checkLayout, RingBuffer, type BpfObject } from '../ebpf/index.ts';
import { DropReasonCode } from './drop-reasons.ts';
import { decodeEvent, type DatapathEvent, type DropEvent, type TraceEvent } from './events.ts';
import { LXC_OBJECT_PATH, LxcProgram, loadLxc, lxcMaps, type LxcMaps } from './lxc.ts';
import { IpcacheFlag, nodeConfig, RoutingModeCode } from './maps.ts';
import { OVERLAY_OBJECT_PATH, OverlayProgram, loadOverlay } from './overlay.ts';
import { buildIpv4Frame } from './packet.ts';

const TC_ACT_OK = 0;
const TC_ACT_SHOT = 2;
const TC_ACT_REDIRECT = 7;

/** On the loopback interface (index 1), where BPF_PROG_TEST_RUN puts packets when told no other. */
const POD = { ip: '10.244.1.11', id: 11, identity: 10011, ifindex: 1 };
const REMOTE = { ip: '10.244.2.11', identity: 10021, node: '192.168.100.2' };
const TUNNEL_IFINDEX = 77;

function setup(t: TestContext): { obj: BpfObject; maps: LxcMaps; run(frame: Buffer): { verdict: number; data: Buffer; events: DatapathEvent[] } } {
  const obj = loadLxc();
  const maps = lxcMaps(obj);
  // bpf_lxc knows the pod by its address on the interface its packets arrive on.
  maps.lxc.update({ ip: POD.ip }, { ifindex: POD.ifindex, lxc_id: POD.id, flags: 0, mac: '0a:00:00:00:01:0b', node_mac: 'fe:00:00:00:01:0b', sec_identity: POD.identity });
  const ring = new RingBuffer(maps.events, { lostCounter: maps.eventsLost });
  t.after(() => {
    ring.close();
    obj.close();
  });
  return {
    obj,
    maps,
    run(frame) {
      const result = obj.program(LxcProgram.FROM_CONTAINER).testRun({ data: frame });
      const events: DatapathEvent[] = [];
      ring.consume((_view, offset, length, bytes) => void events.push(decodeEvent(bytes, offset, length)));
      return { verdict: result.returnValue, data: Buffer.from(result.data), events };
    },
  };
}

const frame = () => buildIpv4Frame({ src: POD.ip, dst: REMOTE.ip, tcp: { sport: 40000, dport: 80, flags: 0x02 } });

test('node_config codec matches bpf/lib/maps.h, and the routing mode numbers', () => {
  for (const path of [LXC_OBJECT_PATH, OVERLAY_OBJECT_PATH]) {
    assert.deepEqual(checkLayout(nodeConfig, Btf.fromElf(path)), [], path);
  }
  assert.equal(nodeConfig.size, 16);
  assert.deepEqual(RoutingModeCode, { UNSET: 0, TUNNEL: 1, NATIVE: 2 });
});

test('a packet for a pod behind a tunnel endpoint is encapsulated: redirected to the VXLAN device, reported to-overlay', (t) => {
  const f = setup(t);
  f.maps.nodeCfg.update(0, { tunnel_ifindex: TUNNEL_IFINDEX, routing_mode: RoutingModeCode.TUNNEL, native_cidr: '0.0.0.0', native_cidr_prefixlen: 0 });
  f.maps.ipcache.update({ prefixlen: 24, ip: '10.244.2.0' }, { sec_identity: 2, tunnel_endpoint: REMOTE.node, flags: IpcacheFlag.HAS_TUNNEL_EP });
  f.maps.ipcache.update({ prefixlen: 32, ip: REMOTE.ip }, { sec_identity: REMOTE.identity, tunnel_endpoint: REMOTE.node, flags: IpcacheFlag.HAS_TUNNEL_EP });
  const input = frame();
  const { verdict, data, events } = f.run(input);
  assert.equal(verdict, TC_ACT_REDIRECT);
  assert.deepEqual(data, input, 'the inner packet is left as it was; the device adds the outer headers');
  assert.equal(events.length, 1);
  const ev = events[0] as TraceEvent;
  assert.equal(ev.kind, 'trace');
  assert.equal(ev.observationPointName, 'to-overlay');
  assert.equal(ev.dstIfindex, TUNNEL_IFINDEX);
  assert.equal(ev.srcIdentity, POD.identity);
  assert.equal(ev.dstIdentity, REMOTE.identity);
  assert.equal(ev.source, POD.id);
});

test('without a tunnel device the packet is dropped rather than leaked unencapsulated', (t) => {
  const f = setup(t);
  f.maps.ipcache.update({ prefixlen: 24, ip: '10.244.2.0' }, { sec_identity: 2, tunnel_endpoint: REMOTE.node, flags: IpcacheFlag.HAS_TUNNEL_EP });
  const { verdict, events } = f.run(frame());
  assert.equal(verdict, TC_ACT_SHOT);
  assert.equal(events.length, 1);
  const drop = events[0] as DropEvent;
  assert.equal(drop.kind, 'drop');
  assert.equal(drop.reason, DropReasonCode.DROP_NO_TUNNEL_ENDPOINT);
  assert.equal(drop.dstIdentity, 2);
});

test('native mode without a native routing CIDR: the same destination without HAS_TUNNEL_EP goes to the stack', (t) => {
  const f = setup(t);
  f.maps.nodeCfg.update(0, { tunnel_ifindex: 0, routing_mode: RoutingModeCode.NATIVE, native_cidr: '0.0.0.0', native_cidr_prefixlen: 0 });
  f.maps.ipcache.update({ prefixlen: 32, ip: REMOTE.ip }, { sec_identity: REMOTE.identity, tunnel_endpoint: REMOTE.node, flags: 0 });
  const { verdict, events } = f.run(frame());
  assert.equal(verdict, TC_ACT_OK);
  assert.equal((events[0] as TraceEvent).observationPointName, 'to-stack');
  assert.equal(events[0].dstIdentity, REMOTE.identity);
});

test('cil_from_overlay loads against the shared maps and refuses a packet that came through no tunnel', (t) => {
  const obj = loadOverlay();
  t.after(() => obj.close());
  const result = obj.program(OverlayProgram.FROM_OVERLAY).testRun({ data: buildIpv4Frame({ src: REMOTE.ip, dst: POD.ip, udp: { sport: 1, dport: 2 } }) });
  assert.equal(result.returnValue, TC_ACT_SHOT);
});
