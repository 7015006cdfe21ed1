/**
 * The XDP load balancer's codecs against bpf_xdp_lb.o's BTF, and its programs load on this kernel.
 * Needs `bash scripts/build-bpf.sh`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Btf, checkLayout } from '../ebpf/index.ts';
import { XDP_LB_OBJECT_PATH, XLB_MAGLEV_SIZE, createXdpMaglevInner, loadXdpLb, xlbBackend, xlbConfig, xlbConn, xlbFlow, xlbStats, xlbVip, xlbVipKey, xlbNexthop, XdpLbMapName } from './xdp-maps.ts';

test('XDP load balancer codecs match bpf/bpf_xdp_lb.c', () => {
  const btf = Btf.fromElf(XDP_LB_OBJECT_PATH);
  for (const codec of [xlbVipKey, xlbVip, xlbBackend, xlbFlow, xlbConn, xlbStats, xlbConfig, xlbNexthop]) assert.deepEqual(checkLayout(codec, btf), [], codec.name);
  assert.equal(xlbVipKey.size, 8);
  assert.equal(xlbFlow.size, 16);
});

test('the XDP load balancer loads, with Maglev tables of the size the agent uses', () => {
  using obj = loadXdpLb();
  assert.equal(obj.map(XdpLbMapName.MAGLEV).info().maxEntries, 512);
  // ciliate_xlb_vip_gens' value is a bare __u32 (no struct for checkLayout): its size, then.
  assert.equal(obj.map(XdpLbMapName.VIP_GENS).info().valueSize, 4);
  // The inner table must be the one createXdpMaglevInner makes: the kernel takes it into the outer map.
  using inner = createXdpMaglevInner(new Uint32Array(XLB_MAGLEV_SIZE).fill(1));
  obj.map(XdpLbMapName.MAGLEV).setInnerMap(Buffer.alloc(4), inner);
});
