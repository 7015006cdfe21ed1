/**
 * Processes that were running before the sensor started, read from /proc the way Tetragon's
 * procfs walk does (flag `procFS`). Start times become the same monotonic ns the sensor's ktime
 * uses, so a process's exec_id does not depend on how it was first seen.
 * @module
 */
import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import type { NamespaceName } from './events.ts';
import { NAMESPACES } from './events.ts';
import { AUID_UNSET, type ProcessSnapshot } from './process-cache.ts';

/** USER_HZ: /proc reports start times in these ticks; 100 on every Linux architecture we run on. */
const TICKS_PER_SECOND = 100n;
const NS_PER_TICK = 1_000_000_000n / TICKS_PER_SECOND;

/** /proc/<pid>/ns names, by Tetragon's namespace names. */
const NS_FILES: Record<NamespaceName, string> = {
  uts: 'uts',
  ipc: 'ipc',
  mnt: 'mnt',
  pid: 'pid',
  pid_for_children: 'pid_for_children',
  net: 'net',
  time: 'time',
  time_for_children: 'time_for_children',
  cgroup: 'cgroup',
  user: 'user',
};

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

function inode(path: string): number {
  try {
    return statSync(path).ino;
  } catch {
    return 0;
  }
}

function readLink(path: string): string {
  try {
    return readlinkSync(path);
  } catch {
    return '';
  }
}

/** One process from /proc, or undefined when it is gone or is a kernel thread (no executable). */
export function readProcess(pid: number, root = '/proc'): ProcessSnapshot | undefined {
  const dir = `${root}/${pid}`;
  const stat = readText(`${dir}/stat`);
  const status = readText(`${dir}/status`);
  if (stat === undefined || status === undefined) return undefined;
  // comm may hold spaces and parentheses: the fields start after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ppid = Number(fields[1]);
  const startTicks = BigInt(fields[19] ?? 0);
  const cmdline = readText(`${dir}/cmdline`) ?? '';
  const argv = cmdline.split('\0');
  if (argv.at(-1) === '') argv.pop();
  // Kernel threads have neither an executable nor a command line. An executable we may not read
  // (init's, on some hosts, even for root) is named by argv[0].
  const binary = readLink(`${dir}/exe`).replace(/ \(deleted\)$/, '') || (argv[0] ?? '');
  if (!binary) return undefined;
  const field = (name: string): string => status.match(new RegExp(`^${name}:\\s*(.*)$`, 'm'))?.[1] ?? '';
  const uids = field('Uid').split(/\s+/).map(Number);
  const hex = (name: string): bigint => BigInt(`0x${field(name) || '0'}`);
  const loginuid = Number(readText(`${dir}/loginuid`) ?? AUID_UNSET);
  const ns = readNamespaces(pid, root);
  return {
    pid,
    ppid,
    ktime: startTicks * NS_PER_TICK,
    binary,
    args: argv.slice(1),
    cwd: readLink(`${dir}/cwd`),
    uid: uids[1] ?? 0,
    auid: Number.isFinite(loginuid) ? loginuid : AUID_UNSET,
    caps: { effective: hex('CapEff'), permitted: hex('CapPrm'), inheritable: hex('CapInh') },
    ns,
  };
}

/** A process's namespace inode numbers (0 for one that cannot be read). */
export function readNamespaces(pid: number, root = '/proc'): Record<NamespaceName, number> {
  const ns = {} as Record<NamespaceName, number>;
  for (const name of NAMESPACES) ns[name] = inode(`${root}/${pid}/ns/${NS_FILES[name]}`);
  return ns;
}

/**
 * The host's namespaces: init's, or where init's may not be read (some hosts deny even root
 * /proc/1/ns), kthreadd's, which is in the initial namespaces on every host.
 */
export function hostNamespaces(root = '/proc'): Record<NamespaceName, number> {
  const init = readNamespaces(1, root);
  const kthreadd = readNamespaces(2, root);
  return Object.fromEntries(NAMESPACES.map((n) => [n, init[n] || kthreadd[n]])) as Record<NamespaceName, number>;
}

/** Every user-space process now, parents before children (by start time, then pid). */
export function readAllProcesses(root = '/proc'): ProcessSnapshot[] {
  const out: ProcessSnapshot[] = [];
  for (const name of readdirSync(root)) {
    if (!/^\d+$/.test(name)) continue;
    const snapshot = readProcess(Number(name), root);
    if (snapshot) out.push(snapshot);
  }
  return out.sort((a, b) => (a.ktime === b.ktime ? a.pid - b.pid : a.ktime < b.ktime ? -1 : 1));
}
