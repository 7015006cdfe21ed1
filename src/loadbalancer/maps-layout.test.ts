/**
 * The TS codecs of the load-balancing maps against bpf_sock.o's BTF (sizes and field offsets),
 * and the object's programs and maps load on this kernel. Needs `bash scripts/build-bpf.sh`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BpfObject, Btf, checkLayout } from '../ebpf/index.ts';
import { dropEvent, eventHeader } from '../datapath/index.ts';
import { lb4AffinityKey, lb4Backend, lb4Key, lb4ReverseNat, lb4ReverseSk, lb4ReverseSkKey, lb4Service, lbAffinityMatch, lbAffinityVal, lb4Nat, SOCK_OBJECT_PATH, sockEndpoint } from './maps.ts';
import { HOST_OBJECT_PATH, HostProgram } from './host.ts';

test('load-balancing map codecs match bpf/lib/lb.h', () => {
  const btf = Btf.fromElf(SOCK_OBJECT_PATH);
  for (const codec of [lb4Key, lb4Service, lb4Backend, lb4ReverseNat, lb4ReverseSkKey, lb4ReverseSk, lb4AffinityKey, lbAffinityVal, lbAffinityMatch, lb4Nat, sockEndpoint]) assert.deepEqual(checkLayout(codec, btf), [], codec.name);
  assert.equal(lb4Key.size, 12);
  assert.equal(lb4Service.size, 12);
  assert.equal(lb4Backend.size, 8);
  assert.equal(lb4ReverseNat.size, 8);
  assert.equal(lb4ReverseSkKey.size, 16);
  assert.equal(lb4ReverseSk.size, 8);
  assert.equal(lb4AffinityKey.size, 16);
  assert.equal(lbAffinityVal.size, 16);
  assert.equal(lbAffinityMatch.size, 8);
  assert.equal(lb4Nat.size, 16);
  assert.equal(sockEndpoint.size, 12);
});

test('the socket hooks\' drop event is the datapath\'s one layout (bpf/lib/events.h)', () => {
  const btf = Btf.fromElf(SOCK_OBJECT_PATH);
  for (const codec of [eventHeader, dropEvent]) assert.deepEqual(checkLayout(codec, btf), [], codec.name);
});

test('bpf_host.o: the north-south programs pass the verifier on this kernel with private maps', () => {
  using obj = BpfObject.load(HOST_OBJECT_PATH, { constants: { NODE_IPV4: 0x0164a8c0 } });
  for (const name of Object.values(HostProgram)) assert.ok(obj.program(name).fd > 0, name);
});
