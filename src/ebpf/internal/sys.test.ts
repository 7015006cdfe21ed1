/**
 * The syscall boundary: bpf(2) through the Node-API addon (build/native, from
 * src/ebpf/native/bpf_syscall.c) and through koffi must mean the same thing, since the library
 * uses whichever it has. Needs root and `npm run build`.
 * @module
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BpfMap } from '../map.ts';
import { u32, u64 } from '../codec.ts';
import { BpfCommand, Errno, MapType } from './constants.ts';
import { addonBpf, addressOf, bpfSyscallPath, koffiBpf } from './sys.ts';
import { MapElemAttr } from './attr.ts';

test('the addon is built and used for bpf(2)', () => {
  assert.equal(bpfSyscallPath, 'addon', 'build/native/bpf_syscall.node is missing: run npm run build');
  assert.equal(typeof addonBpf, 'function');
});

test('addon and koffi agree: results, values written through them, and -errno', (t) => {
  assert.ok(addonBpf);
  const map = BpfMap.create({ type: MapType.HASH, keySize: 4, valueSize: 8, maxEntries: 16, name: 'sys_test' }, u32, u64);
  t.after(() => map.close());
  const key = Buffer.alloc(4);
  const value = Buffer.alloc(8);
  const attr = Buffer.alloc(MapElemAttr.size);
  attr.writeUInt32LE(map.fd, MapElemAttr.mapFd);
  attr.writeBigUInt64LE(addressOf(key), MapElemAttr.key);
  attr.writeBigUInt64LE(addressOf(value), MapElemAttr.value);

  for (const [name, call] of [['addon', addonBpf], ['koffi', koffiBpf]] as const) {
    key.writeUInt32LE(name === 'addon' ? 1 : 2, 0);
    assert.equal(call(BpfCommand.MAP_LOOKUP_ELEM, attr, attr.length), -Errno.ENOENT, `${name}: lookup of a missing key`);
    value.writeBigUInt64LE(name === 'addon' ? 11n : 22n, 0);
    assert.equal(call(BpfCommand.MAP_UPDATE_ELEM, attr, attr.length), 0, `${name}: update`);
    // Flags are the last field of this attr: a bad flag is the kernel's EINVAL, not a crash.
    attr.writeUInt32LE(0xff, MapElemAttr.flags);
    assert.equal(call(BpfCommand.MAP_UPDATE_ELEM, attr, attr.length), -Errno.EINVAL, `${name}: bad flags`);
    attr.writeUInt32LE(0, MapElemAttr.flags);
    assert.equal(call(0x7fff as BpfCommand, attr, attr.length), -Errno.EINVAL, `${name}: unknown command`);
  }
  assert.equal(map.lookup(1), 11n);
  assert.equal(map.lookup(2), 22n);
  assert.throws(() => (addonBpf as (...args: unknown[]) => number)(1, 'not a buffer', 8), TypeError);
});
