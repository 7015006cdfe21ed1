/**
 * Test fixtures on the real kernel: uniquely named network namespaces, veth pairs, cgroups and
 * bpffs pin directories, each removed by the test's cleanup even when the test fails.
 * @module
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, rmSync, rmdirSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { TestContext } from 'node:test';

export const REPO_ROOT = join(import.meta.dirname, '..', '..', '..');
export const BPF_BUILD_DIR = join(REPO_ROOT, 'build', 'bpf');

export function objectPath(name: string): string {
  return join(BPF_BUILD_DIR, `${name}.o`);
}

/** A short unique suffix: interface names allow only 15 characters. */
export function uniqueId(): string {
  return `${process.pid.toString(36).slice(-3)}${randomBytes(2).toString('hex')}`;
}

export function run(command: string, args: string[]): string {
  return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

export function ip(...args: string[]): string {
  return run('ip', args);
}

export function ipIn(netns: string, ...args: string[]): string {
  return run('ip', ['-n', netns, ...args]);
}

export interface NetnsPair {
  /** Namespace names (for `ip netns exec`), and their /run/netns paths. */
  a: string;
  b: string;
  pathA: string;
  pathB: string;
  /** The veth end in a (named `veth0`) and in b (named `veth1`). */
  ifA: string;
  ifB: string;
  addrA: string;
  addrB: string;
}

/** Two fresh namespaces joined by a veth pair with 10.199.<n>.1/.2; removed at test end. */
export function netnsPair(t: TestContext, subnet = 1): NetnsPair {
  const id = uniqueId();
  const a = `cte-a-${id}`;
  const b = `cte-b-${id}`;
  t.after(() => {
    for (const ns of [a, b]) {
      try {
        ip('netns', 'del', ns);
      } catch {
        // already gone
      }
    }
  });
  ip('netns', 'add', a);
  ip('netns', 'add', b);
  const tmpA = `cta${id}`;
  const tmpB = `ctb${id}`;
  ip('link', 'add', tmpA, 'type', 'veth', 'peer', 'name', tmpB);
  ip('link', 'set', tmpA, 'netns', a, 'name', 'veth0');
  ip('link', 'set', tmpB, 'netns', b, 'name', 'veth1');
  const addrA = `10.199.${subnet}.1`;
  const addrB = `10.199.${subnet}.2`;
  ipIn(a, 'addr', 'add', `${addrA}/24`, 'dev', 'veth0');
  ipIn(b, 'addr', 'add', `${addrB}/24`, 'dev', 'veth1');
  for (const [ns, dev] of [[a, 'veth0'], [b, 'veth1']] as const) {
    ipIn(ns, 'link', 'set', 'lo', 'up');
    ipIn(ns, 'link', 'set', dev, 'up');
  }
  return { a, b, pathA: `/run/netns/${a}`, pathB: `/run/netns/${b}`, ifA: 'veth0', ifB: 'veth1', addrA, addrB };
}

export function ping(netns: string, address: string, count = 3): boolean {
  try {
    run('ip', ['netns', 'exec', netns, 'ping', '-c', String(count), '-i', '0.1', '-W', '1', address]);
    return true;
  } catch {
    return false;
  }
}

const CGROUP2_ROOT = existsSync('/sys/fs/cgroup/unified/cgroup.procs') ? '/sys/fs/cgroup/unified' : '/sys/fs/cgroup';

/**
 * A fresh cgroup v2 directory (never the root), removed at test end after its processes left,
 * with the cgroups a test made inside it (a container's under a test's own), deepest first.
 */
export function testCgroup(t: TestContext): string {
  const path = join(CGROUP2_ROOT, `ciliate-test-${uniqueId()}`);
  mkdirSync(path);
  const remove = (dir: string): void => {
    try {
      for (const child of readdirSync(dir, { withFileTypes: true })) if (child.isDirectory()) remove(join(dir, child.name));
    } catch {
      // already gone
    }
    try {
      // Move anything still inside back to the root so the directory can be removed.
      const pids = readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean);
      for (const pid of pids) writeFileSync(join(CGROUP2_ROOT, 'cgroup.procs'), pid);
      rmdirSync(dir);
    } catch {
      // already gone
    }
  };
  t.after(() => remove(path));
  return path;
}

/** A fresh directory in bpffs for pins, removed (with its pins) at test end. */
export function pinDir(t: TestContext): string {
  const path = `/sys/fs/bpf/ciliate-test-${uniqueId()}`;
  mkdirSync(path, { recursive: true });
  t.after(() => rmSync(path, { recursive: true, force: true }));
  return path;
}
