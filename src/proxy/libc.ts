/**
 * What the node proxy needs of libc that Node does not offer (through koffi). The two socket options:
 * IP_TRANSPARENT on the listener, so the connections the datapath assigns to it (bpf_sk_assign)
 * can be answered from their original destination, and SO_MARK on the proxy's own connections,
 * which tells the datapath whom the proxy speaks for (bpf/lib/proxy.h). Both need CAP_NET_ADMIN,
 * which is the point: no pod and no unprivileged process can set them. And the parent-death
 * signal: the proxy process never outlives its agent, not even a kill -9 of it.
 * @module
 */
import koffi from 'koffi';

const SOL_SOCKET = 1;
const SO_MARK = 36;
const SOL_IP = 0;
const IP_TRANSPARENT = 19;
const AF_INET = 2;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;

interface Libc {
  prctl: (option: number, arg: number, a3: number, a4: number, a5: number) => number;
  getppid: () => number;
  setsockopt: (fd: number, level: number, name: number, value: number[], len: number) => number;
  socket: (domain: number, type: number, protocol: number) => number;
  close: (fd: number) => number;
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
