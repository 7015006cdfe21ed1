/**
 * The rtnetlink addon (src/datapath/native/rtnetlink.c, built by scripts/build-native.sh): socket
 * calls returning -errno, never throwing for the kernel's refusals.
 * @module
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';

export interface RtnetlinkAddon {
  /** A NETLINK_ROUTE socket created inside `netns` (a namespace file), bound to `groups`: its fd or -errno. */
  open(netns: string | null, groups: number): number;
  close(fd: number): number;
  /** Sends `request`, reads until `terminals` NLMSG_ERROR/NLMSG_DONE messages came; on libuv's pool. */
  transact(fd: number, request: Buffer, terminals: number): Promise<Buffer | number>;
  /** One datagram without blocking, or -errno (-EAGAIN: nothing waiting). */
  recv(fd: number): Buffer | number;
  /** Writes `value` to the /proc/sys file `path` as seen from `netns`: 0 or -errno. */
  sysctlWrite(netns: string | null, path: string, value: string): number;
  /** The cookie bpf_get_netns_cookie() gives for sockets of the namespace at `netns`, or -errno. */
  netnsCookie(netns: string): bigint | number;
}

const ADDON_PATH = join(import.meta.dirname, '..', '..', '..', 'build', 'native', 'rtnetlink.node');

let loaded: RtnetlinkAddon | undefined;

export function rtnetlink(): RtnetlinkAddon {
  if (loaded) return loaded;
  if (!existsSync(ADDON_PATH)) throw new Error(`the rtnetlink addon is not built (${ADDON_PATH}): run npm run build`);
  loaded = createRequire(import.meta.url)(ADDON_PATH) as RtnetlinkAddon;
  return loaded;
}
