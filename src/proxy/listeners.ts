/**
 * The node proxies' listening sockets in the datapath's ciliate_proxy_listeners (bpf/lib/maps.h),
 * where cil_proxy_lookup finds the listener for a SYN the stack takes through a TIME_WAIT socket
 * of its 4-tuple (bpf/lib/proxy.h). Each proxy puts its own: the socket leaves the map by itself
 * when it closes, so a restarted proxy's replaces it.
 * @module
 */
import type { Server } from 'node:net';
import { BpfMap, u32, u64 } from '../ebpf/index.ts';
import { listenerFd } from './libc.ts';

/** Puts `server`'s listening socket into the map pinned at `pin`, under `port`. */
export function publishListener(pin: string, server: Server, port: number): void {
  using listeners = BpfMap.openPinned(pin, u32, u64);
  listeners.update(port, BigInt(listenerFd(server)));
}
