import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { BpfObject } from '../object.ts';
import { u32, u64 } from '../codec.ts';
import { BpfError, NotSupportedError } from '../errors.ts';
import { LinkType } from '../internal/constants.ts';
import { objectPath, pinDir } from '../internal/testutils.ts';
import { Link } from './link.ts';
import { attachAuto, attachRawTracepoint, attachTracepoint, attachTracing, explainLoadError, unsupportedFeatureFor } from './tracing.ts';
import { attachUprobe } from './uprobe.ts';

// Slots and config keys of testdata/tracing.c.
const SLOT = { tp: 0, rawTp: 1, tpBtf: 2, uprobe: 3, uretprobe: 4, uprobeArgSum: 5, uretprobeRetSum: 6 } as const;
const CFG_PARENT_TGID = 0;
const CFG_UPROBE_TGID = 1;
const EXEC = { group: 'sched', name: 'sched_process_exec' } as const;

function load() {
  const obj = BpfObject.load(objectPath('tracing'));
  const counts = obj.map('counts').withCodecs(u32, u64);
  const config = obj.map('trace_config').withCodecs(u32, u32);
  // The programs count only execs whose parent is this process: other activity on the machine
  // cannot move the counters.
  config.update(CFG_PARENT_TGID, process.pid);
  const count = (slot: number): bigint => counts.lookup(slot) ?? 0n;
  return { obj, counts, config, count };
}

/** Runs /bin/true `times` times as children of this process: each is exactly one exec. */
function execTrue(times: number): void {
  for (let i = 0; i < times; i++) {
    const result = spawnSync('/bin/true');
    assert.equal(result.status, 0);
  }
}

// A tiny program whose noinline, noipa function the uprobe tests probe: called with 1..n, it
// returns 2x, so the probes' argument and return-value sums prove they read real registers.
const TARGET_SOURCE = `
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
__attribute__((noinline, noipa)) int ciliate_probe_target(int x) { __asm__ volatile("" ::: "memory"); return 2 * x; }
int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 1;
  if (argc > 2 && strcmp(argv[2], "wait") == 0) {
    char c;
    printf("ready\\n");
    fflush(stdout);
    if (read(0, &c, 1) != 1) return 2;
  }
  int sum = 0;
  for (int i = 1; i <= n; i++) sum += ciliate_probe_target(i);
  printf("%d\\n", sum);
  return 0;
}
`;
let workDir = '';
let target = '';

before(() => {
  workDir = mkdtempSync(join(tmpdir(), 'ciliate-uprobe-'));
  writeFileSync(join(workDir, 'target.c'), TARGET_SOURCE);
  target = join(workDir, 'target');
  execFileSync('gcc', ['-O1', '-g', '-o', target, join(workDir, 'target.c')]);
});

after(() => {
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

function runTarget(n: number): void {
  assert.equal(execFileSync(target, [String(n)], { encoding: 'utf8' }).trim(), String(n * (n + 1)));
}

test('tracepoint program counts real execs through a perf event link, and stops on close', (t) => {
  const { obj, count } = load();
  t.after(() => obj.close());
  const link = attachTracepoint(obj.program('on_exec_tp'), EXEC);
  t.after(() => link.close());
  assert.equal(link.info().type, LinkType.PERF_EVENT);
  execTrue(3);
  assert.equal(count(SLOT.tp), 3n);
  link.close();
  execTrue(2);
  assert.equal(count(SLOT.tp), 3n, 'closing the only fd of an unpinned link detaches the program');
});

test('raw tracepoint program counts execs and reads the exec filename through CO-RE', (t) => {
  const { obj, count } = load();
  t.after(() => obj.close());
  const link = attachRawTracepoint(obj.program('on_exec_raw'), 'sched_process_exec');
  t.after(() => link.close());
  assert.equal(link.info().type, LinkType.RAW_TRACEPOINT);
  execTrue(3);
  assert.equal(count(SLOT.rawTp), 3n);
  const filename = obj.map('last_filename').lookup(Buffer.alloc(4));
  assert.ok(filename);
  assert.equal(filename.toString('utf8', 0, filename.indexOf(0)), '/bin/true');
  link.close();
  execTrue(1);
  assert.equal(count(SLOT.rawTp), 3n);
});

test('tp_btf program counts execs through BTF-typed arguments', (t) => {
  const { obj, count } = load();
  t.after(() => obj.close());
  const link = attachTracing(obj.program('on_exec_btf'));
  t.after(() => link.close());
  assert.equal(link.info().type, LinkType.RAW_TRACEPOINT);
  assert.equal(link.info().programId, obj.program('on_exec_btf').info().id);
  execTrue(4);
  assert.equal(count(SLOT.tpBtf), 4n);
  link.close();
  execTrue(1);
  assert.equal(count(SLOT.tpBtf), 4n);
});

test('attachAuto attaches tracepoint, raw_tp and tp_btf sections, and all three see the same execs', (t) => {
  const { obj, count } = load();
  t.after(() => obj.close());
  const links = ['on_exec_tp', 'on_exec_raw', 'on_exec_btf'].map((name) => attachAuto(obj.program(name)));
  t.after(() => links.forEach((link) => link.close()));
  assert.equal(links[0].info().type, LinkType.PERF_EVENT);
  assert.equal(links[1].info().type, LinkType.RAW_TRACEPOINT);
  execTrue(5);
  assert.deepEqual([count(SLOT.tp), count(SLOT.rawTp), count(SLOT.tpBtf)], [5n, 5n, 5n]);
});

for (const [name, slot] of [
  ['on_exec_tp', SLOT.tp],
  ['on_exec_raw', SLOT.rawTp],
  ['on_exec_btf', SLOT.tpBtf],
] as const) {
  test(`a pinned ${name} link keeps counting after close, reopens from its pin, and stops after unpin`, (t) => {
    const dir = pinDir(t);
    const { obj, count } = load();
    t.after(() => obj.close());
    const path = join(dir, 'exec_link');
    const link = attachAuto(obj.program(name));
    const id = link.info().id;
    link.pin(path);
    link.close();
    execTrue(2);
    assert.equal(count(slot), 2n, 'the pin keeps the program attached with no fd open');

    const reopened = Link.openPinned(path);
    assert.equal(reopened.info().id, id);
    reopened.close();

    // Removing the pin drops the last reference, which detaches. (BPF_LINK_DETACH, which
    // unpinLink tries first, is not implemented for perf-event and raw-tracepoint links.)
    rmSync(path);
    execTrue(2);
    assert.equal(count(slot), 2n, 'unpinning detaches the program');
  });
}

test('uprobe and uretprobe count real calls and read the argument and return value', (t) => {
  const { obj, count } = load();
  t.after(() => obj.close());
  const entry = attachUprobe(obj.program('on_uprobe'), { binary: target, symbol: 'ciliate_probe_target' });
  t.after(() => entry.close());
  // The section ("uretprobe") makes it a return probe without saying so.
  const exit = attachUprobe(obj.program('on_uretprobe'), { binary: target, symbol: 'ciliate_probe_target' });
  t.after(() => exit.close());
  assert.equal(entry.info().type, LinkType.PERF_EVENT);
  runTarget(5);
  assert.equal(count(SLOT.uprobe), 5n);
  assert.equal(count(SLOT.uprobeArgSum), 15n);
  assert.equal(count(SLOT.uretprobe), 5n);
  assert.equal(count(SLOT.uretprobeRetSum), 30n);
  entry.close();
  exit.close();
  runTarget(3);
  assert.equal(count(SLOT.uprobe), 5n, 'closing the link detaches the uprobe');
  assert.equal(count(SLOT.uretprobe), 5n);
});

test('a uprobe with a pid sees only that process', async (t) => {
  const { obj, config, count } = load();
  t.after(() => obj.close());
  const child = spawn(target, ['4', 'wait'], { stdio: ['pipe', 'pipe', 'inherit'] });
  t.after(() => child.kill());
  const [ready] = (await once(child.stdout, 'data')) as [Buffer];
  assert.equal(ready.toString().trim(), 'ready');
  assert.ok(child.pid);
  config.update(CFG_UPROBE_TGID, 0); // the program itself does not filter: the kernel must
  const link = attachUprobe(obj.program('on_uprobe'), { binary: target, symbol: 'ciliate_probe_target', pid: child.pid });
  t.after(() => link.close());
  runTarget(3);
  assert.equal(count(SLOT.uprobe), 0n, 'another process running the same binary is not counted');
  child.stdin.end('x');
  const [code] = (await once(child, 'exit')) as [number];
  assert.equal(code, 0);
  assert.equal(count(SLOT.uprobe), 4n);
  assert.equal(count(SLOT.uprobeArgSum), 10n);
});

test('a pinned uprobe link keeps counting after close and stops after unpin', (t) => {
  const dir = pinDir(t);
  const { obj, count } = load();
  t.after(() => obj.close());
  const path = join(dir, 'uprobe_link');
  const link = attachUprobe(obj.program('on_uprobe'), { binary: target, symbol: 'ciliate_probe_target' });
  link.pin(path);
  link.close();
  runTarget(2);
  assert.equal(count(SLOT.uprobe), 2n);
  rmSync(path);
  runTarget(2);
  assert.equal(count(SLOT.uprobe), 2n);
});

/** This process's open perf event and BPF link fds, by what they point at. */
function perfAndLinkFds(): string[] {
  const fds: string[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const target = readlinkSync(`/proc/self/fd/${fd}`);
      if (target === 'anon_inode:[perf_event]' || target === 'anon_inode:bpf_link') fds.push(target);
    } catch {
      // the fd readdir itself used, already closed
    }
  }
  return fds.sort();
}

test('closing a uprobe link releases exactly the fds libbpf opened for it, once', (t) => {
  const { obj } = load();
  t.after(() => obj.close());
  const baseline = perfAndLinkFds();
  const link = attachUprobe(obj.program('on_uprobe'), { binary: target, symbol: 'ciliate_probe_target' });
  assert.deepEqual(perfAndLinkFds(), [...baseline, 'anon_inode:[perf_event]', 'anon_inode:bpf_link'].sort());
  link.close();
  link.close();
  assert.deepEqual(perfAndLinkFds(), baseline);
  const tracepoint = attachTracepoint(obj.program('on_exec_tp'), EXEC);
  // The perf event fd is closed right away: the link holds the event.
  assert.deepEqual(perfAndLinkFds(), [...baseline, 'anon_inode:bpf_link'].sort());
  tracepoint.close();
  assert.deepEqual(perfAndLinkFds(), baseline);
});

test('uprobe and tracepoint attach errors are typed', (t) => {
  const { obj } = load();
  t.after(() => obj.close());
  assert.throws(
    () => attachUprobe(obj.program('on_uprobe'), { binary: target, symbol: 'no_such_function_here' }),
    (error: unknown) => BpfError.is(error, 'ERR_NOT_FOUND') && /no_such_function_here/.test(error.message),
  );
  assert.throws(() => attachUprobe(obj.program('on_uprobe'), { binary: target }), (error: unknown) => BpfError.is(error, 'ERR_INVALID_ARGUMENT'));
  assert.throws(() => attachAuto(obj.program('on_uprobe')), /names no target; use attachUprobe/);
  assert.throws(
    () => attachTracepoint(obj.program('on_exec_tp'), { group: 'sched', name: 'no_such_event' }),
    (error: unknown) => BpfError.is(error, 'ERR_NOT_FOUND'),
  );
  assert.throws(() => attachRawTracepoint(obj.program('on_exec_raw'), 'no_such_event'), (error: unknown) => BpfError.is(error, 'ERR_NOT_FOUND'));
  assert.throws(() => attachTracepoint(obj.program('on_exec_raw'), EXEC), (error: unknown) => BpfError.is(error, 'ERR_INVALID_ARGUMENT'));
});

const kprobesPresent = existsSync('/sys/bus/event_source/devices/kprobe');

test('kprobe and kretprobe sections fail with NotSupportedError on a kernel without kprobes', { skip: kprobesPresent && 'this kernel has kprobes' }, (t) => {
  const obj = BpfObject.load(objectPath('unsupported'), { programs: ['on_kprobe', 'on_kretprobe'] });
  t.after(() => obj.close());
  for (const name of ['on_kprobe', 'on_kretprobe']) {
    assert.throws(
      () => attachAuto(obj.program(name)),
      (error: unknown) =>
        error instanceof NotSupportedError && error.message === 'not supported on this kernel: kprobes (CONFIG_KPROBES is off)',
    );
  }
});

for (const [program, feature] of [
  ['on_fentry', 'fentry programs'],
  ['on_lsm_file_open', 'BPF LSM programs'],
] as const) {
  test(`loading ${feature} is explained as not supported when the kernel refuses them`, () => {
    const path = objectPath('unsupported');
    let loaded: BpfObject | undefined;
    try {
      loaded = BpfObject.load(path, { programs: [program] });
    } catch (error) {
      // BpfObject.load itself says so; explainLoadError has nothing left to add.
      assert.ok(error instanceof NotSupportedError, `got ${String(error)}`);
      assert.match(error.message, new RegExp(`^not supported on this kernel: ${feature} \\(`));
      assert.ok(BpfError.is(error.cause, 'ERR_PERMISSION'), 'the EPERM it explains is kept as the cause');
      assert.equal(explainLoadError(error, path), error);
      const section = program === 'on_fentry' ? 'fentry/do_unlinkat' : 'lsm/file_open';
      assert.ok(unsupportedFeatureFor(section) instanceof NotSupportedError);
      return;
    }
    // A kernel that loads it must attach it; nothing to explain.
    loaded.close();
    assert.equal(unsupportedFeatureFor(program === 'on_fentry' ? 'fentry/do_unlinkat' : 'lsm/file_open'), undefined);
  });
}

test('explainLoadError leaves errors it cannot explain alone', () => {
  const error = new BpfError('ERR_VERIFIER', 'loading program x: verifier rejected it');
  assert.equal(explainLoadError(error, objectPath('unsupported')), error);
  assert.equal(unsupportedFeatureFor('tp_btf/sched_process_exec'), undefined);
  assert.equal(unsupportedFeatureFor('tc'), undefined);
});
