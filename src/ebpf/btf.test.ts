/**
 * Tests of the BTF reader against testdata/layout.c (built by scripts/build-bpf.sh into
 * build/bpf/layout.o) and this kernel's own BTF.
 * @module
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Btf, checkLayout, readElfSections } from './btf.ts';
import { array, be16, mac, pad, struct, u16, u32, u64, u64n, u8 } from './codec.ts';
import { BpfError } from './errors.ts';

const repoRoot = resolve(import.meta.dirname, '../..');
const objectPath = join(repoRoot, 'build/bpf/layout.o');
const vmlinuxPath = '/sys/kernel/btf/vmlinux';

// Parsed once: every test only reads.
let cached: Btf | undefined;
function fixture(): Btf {
  assert.ok(existsSync(objectPath), `${objectPath} is missing: run bash scripts/build-bpf.sh`);
  cached ??= Btf.fromElf(objectPath);
  return cached;
}

const layoutTestKey = struct('layout_test_key', {
  proto: u8,
  sport: be16,
  addr: u32,
  cookie: u64,
  mac,
  ids: array(u32, 3),
});

test('readElfSections finds .BTF in a clang-built object', () => {
  const sections = readElfSections(objectPath);
  const btf = sections.find((s) => s.name === '.BTF');
  assert.ok(btf, 'no .BTF section');
  assert.ok(btf.size > 24);
  assert.ok(sections.some((s) => s.name === 'tc'));
  assert.ok(sections.some((s) => s.name === '.rodata'));
});

test('struct layout with implicit holes and tail padding', () => {
  const layout = fixture().structLayout('layout_test_key');
  assert.equal(layout.name, 'layout_test_key');
  assert.equal(layout.size, 40);
  assert.deepEqual(
    layout.members.map(({ name, offset, bitOffset, bitSize, size }) => ({ name, offset, bitOffset, bitSize, size })),
    [
      { name: 'proto', offset: 0, bitOffset: 0, bitSize: 0, size: 1 },
      { name: 'sport', offset: 2, bitOffset: 16, bitSize: 0, size: 2 },
      { name: 'addr', offset: 4, bitOffset: 32, bitSize: 0, size: 4 },
      { name: 'cookie', offset: 8, bitOffset: 64, bitSize: 0, size: 8 },
      { name: 'mac', offset: 16, bitOffset: 128, bitSize: 0, size: 6 },
      // Through a typedef of an array of a typedef.
      { name: 'ids', offset: 24, bitOffset: 192, bitSize: 0, size: 12 },
    ],
  );
});

test('struct layout with const member, bitfields and an anonymous union', () => {
  const layout = fixture().structLayout('layout_test_value');
  assert.equal(layout.size, 24);
  assert.deepEqual(layout.members, [
    { name: 'packets', offset: 0, bitOffset: 0, bitSize: 0, size: 8, nested: false },
    { name: 'flags', offset: 8, bitOffset: 64, bitSize: 0, size: 2, nested: false },
    { name: '_pad', offset: 10, bitOffset: 80, bitSize: 0, size: 2, nested: false },
    { name: 'kind', offset: 12, bitOffset: 96, bitSize: 4, size: 4, nested: false },
    { name: 'level', offset: 12, bitOffset: 100, bitSize: 12, size: 4, nested: false },
    { name: 'ifindex', offset: 16, bitOffset: 128, bitSize: 0, size: 4, nested: true },
    { name: 'port', offset: 16, bitOffset: 128, bitSize: 0, size: 2, nested: true },
  ]);
});

test('structLayout of an absent struct throws ERR_NOT_FOUND naming it', () => {
  assert.throws(
    () => fixture().structLayout('layout_test_nope'),
    (error: unknown) => BpfError.is(error, 'ERR_NOT_FOUND') && /layout_test_nope/.test(error.message),
  );
});

test('checkLayout accepts a matching codec', () => {
  assert.equal(layoutTestKey.size, 40);
  assert.deepEqual(checkLayout(layoutTestKey, fixture()), []);
});

test('checkLayout ignores explicit padding and anonymous union alternatives it does not name', () => {
  // kind/level are bitfields, which no codec can express, so cover them with padding.
  const value = struct('layout_test_value', { packets: u64n, flags: u16, _pad: pad(2), _bits: pad(4), ifindex: u32 });
  assert.deepEqual(
    checkLayout(value, fixture()),
    [
      'struct layout_test_value: C member kind (offset 12, size 4) has no codec field',
      'struct layout_test_value: C member level (offset 12, size 4) has no codec field',
    ],
  );
});

test('checkLayout names the field a wrong codec gets wrong', () => {
  const wrong = struct('layout_test_key', {
    proto: u8,
    sport: u32, // __be16 in C: moves addr and every later field
    addr: u32,
    cookie: u64,
    mac,
    ids: array(u32, 3),
  });
  const problems = checkLayout(wrong, fixture());
  assert.ok(problems.some((p) => /field sport has size 4 in codec, 2 in C/.test(p)), problems.join('\n'));
  assert.ok(problems.some((p) => /field sport is at offset 4 in codec, 2 in C/.test(p)), problems.join('\n'));
  assert.ok(problems.some((p) => /field addr is at offset 8 in codec, 4 in C/.test(p)), problems.join('\n'));
});

test('checkLayout reports missing and extra fields, bitfields, size and unknown structs', () => {
  const btf = fixture();
  const lacking = struct('layout_test_key', { proto: u8, sport: be16, addr: u32, cookie: u64, mac, bogus: u32 });
  assert.deepEqual(checkLayout(lacking, btf), [
    'struct layout_test_key: size is 32 in codec, 40 in C',
    'struct layout_test_key: field bogus is not a member in C',
    'struct layout_test_key: C member ids (offset 24, size 12) has no codec field',
  ]);

  const bitfield = struct('layout_test_value', { packets: u64, flags: u16, _pad: pad(2), kind: u32, ifindex: u32 });
  const problems = checkLayout(bitfield, btf);
  assert.ok(problems.some((p) => /field kind is a 4-bit bitfield in C/.test(p)), problems.join('\n'));
  assert.ok(problems.some((p) => /C member level/.test(p)), problems.join('\n'));

  assert.deepEqual(checkLayout(struct('layout_test_nope', { a: u32 }), btf), [
    `struct layout_test_nope: not found in BTF of ${objectPath}`,
  ]);
});

test('datasec .rodata lists the volatile const globals with offsets from the symbol table', () => {
  const rodata = fixture().datasec('.rodata');
  assert.equal(rodata.name, '.rodata');
  assert.equal(rodata.size, 20);
  assert.deepEqual(rodata.vars, [
    { name: 'cfg_a', offset: 0, size: 4 },
    { name: 'cfg_b', offset: 8, size: 8 },
    { name: 'cfg_verdict', offset: 16, size: 4 },
  ]);
  assert.throws(() => fixture().datasec('.nope'), (error: unknown) => BpfError.is(error, 'ERR_NOT_FOUND'));
});

test('enums, hasType and typeSize', () => {
  const btf = fixture();
  assert.deepEqual(
    btf.enumValues('layout_test_verdict'),
    new Map([
      ['LAYOUT_TEST_PASS', 0],
      ['LAYOUT_TEST_DROP', 2],
      ['LAYOUT_TEST_REDIRECT', 7],
    ]),
  );
  assert.ok(btf.hasType('struct', 'layout_test_key'));
  assert.ok(btf.hasType('typedef', 'layout_test_id_t'));
  assert.ok(btf.hasType('func', 'prog'));
  assert.ok(!btf.hasType('union', 'layout_test_key'));
  const id = btf.findType('typedef', 'layout_test_id_t');
  assert.ok(id !== undefined);
  assert.equal(btf.typeSize(id), 4);
  assert.equal(btf.typeSize(btf.findType('struct', 'layout_test_value') ?? 0), 24);
  assert.throws(() => btf.typeSize(btf.findType('func', 'prog') ?? 0), (error: unknown) => BpfError.is(error, 'ERR_INVALID_ARGUMENT'));
  assert.throws(() => btf.typeSize(btf.typeCount), (error: unknown) => BpfError.is(error, 'ERR_INVALID_ARGUMENT'));
});

test('vmlinux BTF parses and describes iphdr', () => {
  const vmlinux = Btf.fromFile(vmlinuxPath);
  assert.ok(vmlinux.typeCount > 1000);
  const iphdr = vmlinux.structLayout('iphdr');
  assert.equal(iphdr.size, 20);
  const saddr = iphdr.members.find((m) => m.name === 'saddr');
  assert.ok(saddr, 'iphdr has no saddr');
  assert.equal(saddr.offset, 12);
  assert.equal(saddr.size, 4);
  const ihl = iphdr.members.find((m) => m.name === 'ihl');
  assert.equal(ihl?.bitSize, 4);
  assert.equal(vmlinux.enumValues('bpf_map_type').get('BPF_MAP_TYPE_HASH'), 1);
  // Ids stay right to the end only if every kind's tail was skipped exactly.
  assert.ok(vmlinux.hasType('func', 'bpf_prog_put'));
  assert.ok(vmlinux.hasType('struct', 'sk_buff'));
});

test('fromElf on a file that is not ELF throws ERR_ELF naming the path', () => {
  const dir = mkdtempSync(join(tmpdir(), 'btf-test-'));
  try {
    const path = join(dir, 'not-elf.o');
    writeFileSync(path, 'this is not an ELF file, just some text that is long enough for a header');
    assert.throws(
      () => Btf.fromElf(path),
      (error: unknown) => BpfError.is(error, 'ERR_ELF') && error.message.includes(path),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('fromFile rejects data without the BTF magic and reports missing files', () => {
  assert.throws(
    () => Btf.fromBuffer(Buffer.alloc(32), 'zeros'),
    (error: unknown) => BpfError.is(error, 'ERR_ELF') && /zeros: bad magic/.test(error.message),
  );
  assert.throws(
    () => Btf.fromFile('/nonexistent/btf'),
    (error: unknown) => BpfError.is(error, 'ERR_NOT_FOUND') && error.message.includes('/nonexistent/btf'),
  );
});
