/**
 * The syscall boundary: libc and bpf(2) through koffi. Everything that touches errno lives here,
 * so the rest of the library only sees typed errors.
 * @module
 */
import { closeSync, existsSync, openSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import koffi from 'koffi';
import { errorFromErrno } from '../errors.ts';
import type { BpfCommand } from './constants.ts';

const SYS_BPF = 321;
const SYS_PERF_EVENT_OPEN = 298;

const libc = koffi.load('libc.so.6');

// Declared non-variadic: koffi then takes its fast call path, which is correct on x86-64.
const syscall3 = libc.func('long syscall(long nr, long a, void *b, uint32_t c)');
const syscall5 = libc.func('long syscall(long nr, void *attr, int pid, int cpu, int group, unsigned long flags)');
const closeFd = libc.func('int close(int fd)');
const dupCloexec = libc.func('int fcntl(int fd, int cmd, int arg)');
const ioctlInt = libc.func('int ioctl(int fd, unsigned long req, long arg)');
const mmapRaw = libc.func('void *mmap(void *addr, size_t len, int prot, int flags, int fd, int64_t off)');
const munmapRaw = libc.func('int munmap(void *addr, size_t len)');
const ifNameToIndex = libc.func('unsigned int if_nametoindex(const char *name)');
const getpagesize = libc.func('int getpagesize()');
const setnsRaw = libc.func('int setns(int fd, int nstype)');
const unshareRaw = libc.func('int unshare(int flags)');

export const PAGE_SIZE: number = getpagesize();

/** The Node-API addon built by scripts/build-native.sh: bpf(2) returning the result or -errno. */
const ADDON_PATH = join(import.meta.dirname, '..', '..', '..', 'build', 'native', 'bpf_syscall.node');

interface Addon {
  bpf(cmd: number, attr: Buffer, size: number): number;
  bpfAsync(cmd: number, attr: Buffer, size: number, netnsFd?: number): Promise<number>;
}

function loadAddon(): Addon | undefined {
  if (!existsSync(ADDON_PATH)) return undefined;
  return createRequire(import.meta.url)(ADDON_PATH) as Addon;
}

/** bpf(2) through koffi: the result or -errno. */
export function koffiBpf(cmd: number, attr: Buffer, size: number): number {
  const ret = Number(syscall3(SYS_BPF, cmd, attr, size));
  return ret < 0 ? -koffi.errno() : ret;
}

/** How this process calls bpf(2): the addon when it was built, else koffi (a slower call path). */
const addon = loadAddon();
/** bpf(2) through the addon, when it was built: the result or -errno. */
export const addonBpf = addon?.bpf;
export const bpfSyscallPath: 'addon' | 'koffi' = addon ? 'addon' : 'koffi';
const bpfCall = addonBpf ?? koffiBpf;

/**
 * bpf(2) on libuv's thread pool, for commands that sleep in the kernel (a map-of-maps update or a
 * TCX attach waits for an RCU grace period): the event loop, and other work, go on meanwhile.
 * Every buffer `attr` points to must stay unchanged until the promise settles. `netnsFd`, an open
 * network namespace file kept open until then, is where the call runs (commands that name an
 * interface by index resolve it there); without it, the pool thread's own namespace. Without the
 * addon it runs synchronously.
 */
export async function bpfAsync(cmd: BpfCommand, attr: Buffer, context: string, size: number = attr.length, netnsFd?: number): Promise<number> {
  let ret: number;
  if (addon) ret = await (netnsFd === undefined ? addon.bpfAsync(cmd, attr, size) : addon.bpfAsync(cmd, attr, size, netnsFd));
  else ret = netnsFd === undefined ? koffiBpf(cmd, attr, size) : inNetnsFd(netnsFd, () => koffiBpf(cmd, attr, size), context);
  if (ret < 0) throw errorFromErrno(context, -ret);
  return ret;
}

/** Runs `fn` with this thread in the network namespace open as `netnsFd`, then back. */
function inNetnsFd<T>(netnsFd: number, fn: () => T, context: string): T {
  const own = openSync('/proc/thread-self/ns/net', 'r');
  try {
    setns(netnsFd, CLONE_NEWNET, `${context}: entering its network namespace`);
    try {
      return fn();
    } finally {
      setns(own, CLONE_NEWNET, `${context}: returning to the original network namespace`);
    }
  } finally {
    closeSync(own);
  }
}

/** Calls bpf(2). Throws a typed error naming `context` when the kernel refuses. */
export function bpf(cmd: BpfCommand, attr: Buffer, context: string, size: number = attr.length): number {
  const ret = bpfCall(cmd, attr, size);
  if (ret < 0) throw errorFromErrno(context, -ret);
  return ret;
}

/** Like bpf(), but returns -errno instead of throwing: for hot paths and expected failures. */
export function bpfRaw(cmd: BpfCommand, attr: Buffer, size: number = attr.length): number {
  return bpfCall(cmd, attr, size);
}

export function perfEventOpen(attr: Buffer, pid: number, cpu: number, groupFd: number, flags: number, context: string): number {
  const ret = Number(syscall5(SYS_PERF_EVENT_OPEN, attr, pid, cpu, groupFd, flags));
  if (ret < 0) throw errorFromErrno(context, koffi.errno());
  return ret;
}

export function close(fd: number): void {
  if (fd >= 0) closeFd(fd);
}

const F_DUPFD_CLOEXEC = 1030;
export function dup(fd: number, context: string): number {
  const ret = dupCloexec(fd, F_DUPFD_CLOEXEC, 3);
  if (ret < 0) throw errorFromErrno(context, koffi.errno());
  return ret;
}

export function ioctl(fd: number, request: number, arg: number, context: string): void {
  if (ioctlInt(fd, request, arg) < 0) throw errorFromErrno(context, koffi.errno());
}

export const PROT_READ = 1;
export const PROT_WRITE = 2;
const MAP_SHARED = 1;

/** Maps `length` bytes of `fd` at `offset`. Returns the address; see view() to read it. */
export function mmap(fd: number, length: number, prot: number, offset: number, context: string): bigint {
  const addr = mmapRaw(null, length, prot, MAP_SHARED, fd, offset) as unknown;
  const value = koffi.address(addr as object);
  if (value === 0xffffffffffffffffn || value === 0n) throw errorFromErrno(context, koffi.errno());
  return value;
}

export function munmap(address: bigint, length: number): void {
  munmapRaw(address, length);
}

/** An ArrayBuffer over raw memory at `address` (no copy). Valid until the memory is unmapped. */
export function view(address: bigint, length: number): ArrayBuffer {
  return koffi.view(address, length) as ArrayBuffer;
}

/** The address of a Buffer's bytes. Buffers never move, so the address can be stored in attr buffers. */
export function addressOf(buffer: Buffer | Uint8Array): bigint {
  return buffer.byteLength === 0 ? 0n : (koffi.address(buffer) as bigint);
}

export function interfaceIndex(name: string): number {
  const index = ifNameToIndex(name);
  if (index === 0) throw errorFromErrno(`looking up interface ${name}`, koffi.errno());
  return index;
}

export const CLONE_NEWNET = 0x40000000;

/** setns(2) on the calling thread. Node runs JS on one thread, so this moves the whole JS context. */
export function setns(fd: number, nstype: number, context: string): void {
  if (setnsRaw(fd, nstype) < 0) throw errorFromErrno(context, koffi.errno());
}

export function unshare(flags: number, context: string): void {
  if (unshareRaw(flags) < 0) throw errorFromErrno(context, koffi.errno());
}

/** Writes a NUL-terminated C string into a fresh Buffer that outlives the call using it. */
export function cString(value: string): Buffer {
  return Buffer.from(`${value}\0`, 'utf8');
}
