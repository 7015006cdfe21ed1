/**
 * Regression tests of the feature probes. The expectations are the facts of the kernel these
 * tests run on (Linux 6.18 with BTF; CONFIG_KPROBES, netkit, WireGuard, ipip, GENEVE and IPVS not
 * built; fentry/fexit/fmod_ret and LSM loads refused with EPERM). A probe that starts answering
 * differently on this machine has regressed — or the machine changed, and these lines with it.
 * @module
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { BpfError, NotSupportedError } from './errors.ts';
import { AttachType, Errno, MapType, ProgramType } from './internal/constants.ts';
import {
  FEATURE_NAMES,
  Helper,
  formatFeatureReport,
  probeAll,
  probeFeature,
  probeHelper,
  probeMapType,
  probeProgramType,
  requireFeature,
  type FeatureReport,
} from './features.ts';

const isRoot = process.getuid?.() === 0;

describe('features', { skip: !isRoot && 'needs root' }, () => {
  describe('map types', () => {
    const supported: [string, MapType][] = [
      ['hash', MapType.HASH],
      ['array', MapType.ARRAY],
      ['lru_hash', MapType.LRU_HASH],
      ['lpm_trie', MapType.LPM_TRIE],
      ['ringbuf', MapType.RINGBUF],
      ['percpu_hash', MapType.PERCPU_HASH],
      ['percpu_array', MapType.PERCPU_ARRAY],
      ['lru_percpu_hash', MapType.LRU_PERCPU_HASH],
      ['hash_of_maps', MapType.HASH_OF_MAPS],
      ['array_of_maps', MapType.ARRAY_OF_MAPS],
      // Needs BTF key/value ids: proves the probe's own BTF blob loads.
      ['sk_storage', MapType.SK_STORAGE],
    ];
    for (const [name, type] of supported) {
      it(`${name} is supported`, () => assert.equal(probeMapType(type).status, 'supported'));
    }

    it('a map type past the end of the kernel table is unsupported (EINVAL)', () => {
      const result = probeMapType(200 as MapType);
      assert.equal(result.status, 'unsupported');
      assert.equal(result.errno, Errno.EINVAL);
    });
  });

  describe('program types', () => {
    const supported: [string, ProgramType][] = [
      ['sched_cls', ProgramType.SCHED_CLS],
      ['xdp', ProgramType.XDP],
      ['tracepoint', ProgramType.TRACEPOINT],
      ['raw_tracepoint', ProgramType.RAW_TRACEPOINT],
      ['cgroup_sock_addr', ProgramType.CGROUP_SOCK_ADDR],
    ];
    for (const [name, type] of supported) {
      it(`${name} is supported`, () => assert.equal(probeProgramType(type).status, 'supported'));
    }

    it('fentry (TRACING) is refused before verification with EPERM', () => {
      const result = probeProgramType(ProgramType.TRACING);
      assert.equal(result.status, 'unsupported');
      assert.equal(result.errno, Errno.EPERM);
      assert.match(result.detail ?? '', /refused before verification \(EPERM\) on do_unlinkat/);
    });

    it('LSM is refused before verification with EPERM', () => {
      const result = probeProgramType(ProgramType.LSM);
      assert.equal(result.status, 'unsupported');
      assert.equal(result.errno, Errno.EPERM);
      assert.match(result.detail ?? '', /refused before verification \(EPERM\) on bpf_lsm_file_open/);
    });

    it('tp_btf (TRACING on a btf_trace_ typedef) loads', () => {
      assert.equal(probeProgramType(ProgramType.TRACING, AttachType.TRACE_RAW_TP).status, 'supported');
    });

    it('an unknown program type is unsupported, not unknown', () => {
      assert.equal(probeProgramType(200 as ProgramType).status, 'unsupported');
    });
  });

  describe('helpers', () => {
    it('bpf_ringbuf_output is supported (the verifier got as far as its arguments)', () => {
      const result = probeHelper(ProgramType.SCHED_CLS, Helper.ringbuf_output);
      assert.equal(result.status, 'supported');
      assert.match(result.detail ?? '', /expected=map_ptr/);
    });

    it('bpf_redirect_peer is supported in sched_cls', () => {
      assert.equal(probeHelper(ProgramType.SCHED_CLS, Helper.redirect_peer).status, 'supported');
    });

    it('bpf_redirect_peer is unavailable to tracepoints', () => {
      const result = probeHelper(ProgramType.TRACEPOINT, Helper.redirect_peer);
      assert.equal(result.status, 'unsupported');
      assert.match(result.detail ?? '', /cannot use helper|unknown func/);
    });

    it('an invented helper id is unsupported', () => {
      const result = probeHelper(ProgramType.SCHED_CLS, 9999);
      assert.equal(result.status, 'unsupported');
      assert.match(result.detail ?? '', /invalid func/);
    });
  });

  describe('attach points and devices', () => {
    const expected: [string, 'supported' | 'unsupported'][] = [
      ['tcx', 'supported'],
      ['netkit', 'unsupported'],
      ['kprobes', 'unsupported'],
      ['uprobes', 'supported'],
      ['btf', 'supported'],
      ['bpffs', 'supported'],
      ['cgroup2', 'supported'],
      ['veth', 'supported'],
      ['vxlan', 'supported'],
      ['geneve', 'unsupported'],
      ['ipip', 'unsupported'],
      ['wireguard', 'unsupported'],
      ['ipvs', 'unsupported'],
    ];
    for (const [name, status] of expected) {
      it(`${name} is ${status}`, () => assert.equal(probeFeature(name).status, status, probeFeature(name).detail));
    }

    it('finds the hybrid cgroup2 mount', () => {
      assert.match(probeFeature('cgroup2').detail ?? '', /^\/sys\/fs\/cgroup\/unified/);
    });

    it('creates no device in the root network namespace', () => {
      probeAll();
      for (const name of ['cil0', 'cil1', 'cil2', 'cil3', 'cil4', 'cil5', 'cil6']) {
        assert.equal(existsSync(join('/sys/class/net', name)), false, `${name} leaked into the root namespace`);
      }
    });
  });

  describe('requireFeature', () => {
    it('throws NotSupportedError for kprobes', () => {
      assert.throws(
        () => requireFeature('kprobes'),
        (error: unknown) =>
          error instanceof NotSupportedError &&
          error.code === 'ERR_NOT_SUPPORTED' &&
          error.feature === 'kprobes' &&
          error.message.startsWith('not supported on this kernel: kprobes'),
      );
    });

    it('passes for supported features', () => {
      requireFeature('tcx');
      requireFeature('ringbuf');
      requireFeature('bpf_redirect_peer');
    });

    it('rejects names it does not know', () => {
      assert.throws(() => requireFeature('warp_drive'), (error: unknown) => BpfError.is(error, 'ERR_INVALID_ARGUMENT'));
    });

    it('feature names are unique across sections', () => {
      assert.equal(new Set(FEATURE_NAMES).size, FEATURE_NAMES.length);
    });
  });

  describe('probeAll and the report', () => {
    let report: FeatureReport;
    it('probes everything well under 2 s', () => {
      report = probeAll();
      assert.ok(report.durationMs < 2000, `took ${report.durationMs} ms`);
      assert.deepEqual(
        report.sections.map((s) => s.id),
        ['kernel', 'maps', 'programs', 'attach', 'helpers', 'devices'],
      );
      const status = (name: string) => report.sections.flatMap((s) => s.items).find((i) => i.name === name)?.status;
      assert.equal(status('tcx'), 'supported');
      assert.equal(status('fentry'), 'unsupported');
      assert.equal(status('lsm'), 'unsupported');
      assert.equal(status('bpf_ringbuf_output'), 'supported');
      // No probe on this kernel should come back undecided except lockdown (securityfs is not mounted).
      const unknown = report.sections.flatMap((s) => s.items).filter((i) => i.status === 'unknown');
      assert.deepEqual(unknown.map((i) => i.name), ['lockdown'], JSON.stringify(unknown.map((i) => [i.name, i.detail])));
    });

    it('renders a table and survives JSON', () => {
      const text = formatFeatureReport(report);
      assert.match(text, /^eBPF features of Linux \S+ \(probed in \d+ ms\)/);
      for (const header of ['KERNEL', 'MAP TYPES', 'PROGRAM TYPES', 'ATTACH AND LINK TYPES', 'HELPERS', 'DEVICES']) {
        assert.match(text, new RegExp(`^${header}$`, 'm'));
      }
      assert.match(text, /^ {2}tcx +supported +BPF_PROG_QUERY/m);
      assert.match(text, /^ {2}kprobes +unsupported +no \/sys\/bus\/event_source\/devices\/kprobe/m);
      assert.deepEqual(JSON.parse(JSON.stringify(report)), report);
    });
  });

  it('refuses to probe without privilege instead of reporting everything unsupported', () => {
    const module = join(import.meta.dirname, 'features.ts');
    const script = `import(${JSON.stringify(module)}).then((m) => {
      try { m.probeAll(); console.log('no error'); } catch (e) { console.log(e.name + ': ' + e.message); }
    });`;
    const child = spawnSync(process.execPath, ['-e', script], { uid: 65534, gid: 65534, cwd: '/', encoding: 'utf8' });
    assert.equal(child.status, 0, child.stderr);
    assert.match(child.stdout, /^PermissionError: probing eBPF features: EPERM: eBPF needs root/);
  });
});
