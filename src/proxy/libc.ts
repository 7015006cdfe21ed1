/**
 * What the node proxy needs of libc that Node does not offer (through koffi). The two socket options:
 * IP_TRANSPARENT on the listener, so the connections the datapath assigns to it (bpf_sk_assign)
 * can be answered from their original destination, and SO_MARK on the proxy's own connections,
 * which tells the datapath whom the proxy speaks for (bpf/lib/proxy.h). Both need CAP_NET_ADMIN,
 * which is the point: no pod and no unprivileged process can set them. And the parent-death
 * signal: the proxy process never outlives its agent, not even a kill -9 of it.
 * @module
 */
import type { Socket as DgramSocket } from 'node:dgram';
import type { Server } from 'node:net';
import koffi from 'koffi';

const SOL_SOCKET = 1;
const SO_MARK = 36;
const SOL_IP = 0;
const IP_TRANSPARENT = 19;
const AF_INET = 2;
const SOCK_STREAM = 1;
const SOCK_RAW = 3;
/** A raw socket of this protocol sends whole IP packets, headers included (IP_HDRINCL). */
const IPPROTO_RAW = 255;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;

interface Libc {
  prctl: (option: number, arg: number, a3: number, a4: number, a5: number) => number;
  getppid: () => number;
  setsockopt: (fd: number, level: number, name: number, value: number[], len: number) => number;
  socket: (domain: number, type: number, protocol: number) => number;
  close: (fd: number) => number;
  sendto: (fd: number, buf: Buffer, len: number, flags: number, addr: Buffer, addrlen: number) => number;
}

let libc: Libc | undefined;
function load(): Libc {
  if (libc) return libc;
  const lib = koffi.load('libc.so.6');
  libc = {
    prctl: lib.func('int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5)') as Libc['prctl'],
    getppid: lib.func('int getppid()') as Libc['getppid'],
    setsockopt: lib.func('int setsockopt(int fd, int level, int name, _In_ int *value, uint32_t len)') as Libc['setsockopt'],
    socket: lib.func('int socket(int domain, int type, int protocol)') as Libc['socket'],
    close: lib.func('int close(int fd)') as Libc['close'],
    sendto: lib.func('long sendto(int fd, const void *buf, size_t len, int flags, const void *addr, uint32_t addrlen)') as Libc['sendto'],
  };
  return libc;
}

/** A failed socket call, with the errno libc left. */
export class SocketOptionError extends Error {
  readonly code = 'ERR_PROXY_SOCKOPT';
  readonly errno: number;
  constructor(message: string, errno: number) {
    super(`${message}: errno ${errno}`);
    this.errno = errno;
  }
}

function setInt(fd: number, level: number, name: number, value: number, what: string): void {
  if (load().setsockopt(fd, level, name, [value], 4) !== 0) throw new SocketOptionError(what, koffi.errno());
}

/** IP_TRANSPARENT on a listening socket's descriptor. */
export function setTransparent(fd: number): void {
  setInt(fd, SOL_IP, IP_TRANSPARENT, 1, `setting IP_TRANSPARENT on fd ${fd}`);
}

/**
 * IP_TRANSPARENT on a bound dgram socket: the kernel delivers a datagram the datapath assigned to a
 * socket (bpf_sk_assign) only if the socket is transparent. Node keeps the descriptor on the
 * handle behind its state symbol.
 */
export function makeDatagramSocketTransparent(socket: DgramSocket): void {
  setTransparent(datagramFd(socket, 'make transparent'));
}

/** SO_MARK on a bound dgram socket (the DNS proxy's upstream: whom it speaks for, bpf/lib/proxy.h). */
export function markDatagramSocket(socket: DgramSocket, mark: number): void {
  const fd = datagramFd(socket, 'mark');
  setInt(fd, SOL_SOCKET, SO_MARK, mark | 0, `setting SO_MARK 0x${mark.toString(16)} on fd ${fd}`);
}

/** A bound dgram socket's descriptor: Node keeps it on the handle behind its state symbol. */
function datagramFd(socket: DgramSocket, why: string): number {
  const state = Object.getOwnPropertySymbols(socket).find((s) => s.description === 'state symbol');
  const fd = state === undefined ? undefined : (socket as unknown as Record<symbol, { handle?: { fd?: number } } | undefined>)[state]?.handle?.fd;
  if (fd === undefined || fd < 0) throw new Error(`the datagram socket has no file descriptor to ${why}`);
  return fd;
}

/** A listening net.Server's descriptor: Node exposes it only on the handle. */
export function listenerFd(server: Server): number {
  const fd = (server as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (fd === undefined || fd < 0) throw new Error('the listener has no file descriptor');
  return fd;
}

/**
 * IP_TRANSPARENT on a listening net.Server: the connections the datapath assigns to it keep their
 * original destination as their local address.
 */
export function makeListenerTransparent(server: Server): void {
  setTransparent(listenerFd(server));
}

/** A new non-blocking IPv4 TCP socket with SO_MARK `mark`, not yet connected (for net.Socket({ fd })). */
export function markedTcpSocket(mark: number): number {
  const c = load();
  const fd = c.socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw new SocketOptionError('creating a TCP socket', koffi.errno());
  try {
    setInt(fd, SOL_SOCKET, SO_MARK, mark | 0, `setting SO_MARK 0x${mark.toString(16)} on fd ${fd}`);
  } catch (error) {
    c.close(fd);
    throw error;
  }
  return fd;
}

const PR_SET_PDEATHSIG = 1;
const SIGKILL = 9;

/** SIGKILL this process when its parent dies; false when the parent is already gone (or not `parent`). */
export function dieWithParent(parent: number): boolean {
  const c = load();
  if (c.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) !== 0) throw new SocketOptionError('prctl(PR_SET_PDEATHSIG)', koffi.errno());
  return c.getppid() === parent;
}

/**
 * A non-blocking raw IPv4 socket that sends packets whose headers the caller writes, source
 * address included: how the DNS proxy answers a pod from the resolver's address and port (a Node
 * socket can only send from an address and port it is bound to). CAP_NET_RAW only.
 */
export function rawIpv4Socket(): number {
  const fd = load().socket(AF_INET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_RAW);
  if (fd < 0) throw new SocketOptionError('creating a raw IPv4 socket', koffi.errno());
  return fd;
}

/** Sends one whole IPv4 packet (header included) on a rawIpv4Socket; throws with the errno (EAGAIN when the socket's buffer is full). */
export function sendIpv4Packet(fd: number, packet: Buffer, destination: number): void {
  const address = Buffer.alloc(16);
  address.writeUInt16LE(AF_INET, 0);
  address.writeUInt32BE(destination >>> 0, 4);
  if (load().sendto(fd, packet, packet.length, 0, address, address.length) < 0) throw new SocketOptionError(`sending a ${packet.length}-byte packet on raw socket ${fd}`, koffi.errno());
}

/** Closes a descriptor this module opened. */
export function closeDescriptor(fd: number): void {
  load().close(fd);
}
