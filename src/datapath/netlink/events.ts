/**
 * Address changes as the kernel announces them (RTMGRP_IPV4_IFADDR / RTMGRP_IPV6_IFADDR), read
 * on the event loop: the socket sits in libuv's own epoll set through koffi.node.poll, so no
 * thread and no child process waits for them. Subscribe before listing the addresses, so that no
 * change falls between the listing and the first event.
 * @module
 */
import koffi from 'koffi';
import {
  type Family,
  familyOfAf,
  IFA_ADDRESS,
  IFA_LABEL,
  IFA_LOCAL,
  attrText,
  ipText,
  parseAttrs,
  parseMessages,
  RTM_DELADDR,
  RTM_NEWADDR,
  RTMGRP_IPV4_IFADDR,
  RTMGRP_IPV6_IFADDR,
} from './codec.ts';
import { errnoOf, NetlinkError } from './errors.ts';
import { rtnetlink } from './native.ts';
import { openSocket } from './netlink.ts';

export interface AddressEvent {
  type: 'added' | 'removed';
  family: Family;
  address: string;
  prefixlen: number;
  ifindex: number;
  /** IFA_LABEL (IPv4 only): the device name or its alias. */
  label: string | undefined;
}

export interface AddressEventsOptions {
  /** Namespace file to follow; default this process's namespace. */
  netns?: string;
  /** Default [4]. */
  families?: readonly Family[];
  onEvent(event: AddressEvent): void;
  /**
   * A failure of the subscription. ENOBUFS means the kernel dropped events (the socket's buffer
   * overflowed): the subscription goes on, and the listener should list the addresses afresh.
   */
  onError(error: NetlinkError): void;
}

/** koffi.node.poll as it really is (see src/ebpf/ringbuf.ts): the callback gets libuv's status. */
interface PollHandle {
  close(): void;
}
type PollFunction = (fd: number, callback: (status: number) => void) => PollHandle | null;

/**
 * A subscription to address changes; close() ends it.
 *
 * @example
 * const events = AddressEvents.subscribe({ onEvent: (e) => console.log(e.type, e.address), onError: (e) => log.warn(e) });
 * const now = await nl.addresses({ family: 4 });
 * …
 * events.close();
 */
export class AddressEvents {
  readonly #fd: number;
  readonly #poll: PollHandle;
  #closed = false;

  private constructor(fd: number, poll: PollHandle) {
    this.#fd = fd;
    this.#poll = poll;
  }

  static subscribe(options: AddressEventsOptions): AddressEvents {
    const families = options.families ?? [4];
    const groups = (families.includes(4) ? RTMGRP_IPV4_IFADDR : 0) | (families.includes(6) ? RTMGRP_IPV6_IFADDR : 0);
    const where = options.netns ? ` in ${options.netns}` : '';
    const poll = (koffi.node as unknown as { poll?: PollFunction }).poll;
    if (typeof poll !== 'function') throw new NetlinkError(`following addresses${where}: this koffi has no node.poll`, errnoOf('EOPNOTSUPP'));
    const fd = openSocket(options.netns, groups);
    let subscription: AddressEvents | undefined;
    const onReadable = (status: number): void => {
      // Nothing may be thrown back into koffi's native callback (see src/ebpf/ringbuf.ts).
      try {
        if (subscription?.closed) return;
        if (status < 0) {
          options.onError(new NetlinkError(`following addresses${where}`, -status));
          return;
        }
        drain(fd, where, options);
      } catch (error) {
        process.nextTick(() => {
          throw error;
        });
      }
    };
    let handle: PollHandle | null;
    try {
      handle = poll(fd, onReadable);
    } catch (error) {
      rtnetlink().close(fd);
      throw new NetlinkError(`following addresses${where}: koffi.node.poll failed`, errnoOf('EINVAL'), { cause: error });
    }
    if (!handle) {
      rtnetlink().close(fd);
      throw new NetlinkError(`following addresses${where}: koffi.node.poll returned no handle`, errnoOf('EINVAL'));
    }
    subscription = new AddressEvents(fd, handle);
    return subscription;
  }

  get closed(): boolean {
    return this.#closed;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    // uv_poll_stop takes the fd out of epoll at once, so closing it right after is safe.
    this.#poll.close();
    rtnetlink().close(this.#fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** Reads every datagram waiting; the socket is level-triggered, so stopping early loses nothing. */
function drain(fd: number, where: string, options: AddressEventsOptions): void {
  const eagain = errnoOf('EAGAIN');
  for (;;) {
    const data = rtnetlink().recv(fd);
    if (data === -eagain) return;
    if (typeof data === 'number') {
      options.onError(new NetlinkError(`following addresses${where}`, -data));
      // ENOBUFS reports the overflow once; the socket stays usable.
      if (data === -errnoOf('ENOBUFS')) continue;
      return;
    }
    for (const msg of parseMessages(data)) {
      if (msg.type !== RTM_NEWADDR && msg.type !== RTM_DELADDR) continue;
      const family = familyOfAf(msg.payload.readUInt8(0));
      const attrs = parseAttrs(msg.payload.subarray(8));
      const bytes = attrs.get(IFA_LOCAL) ?? attrs.get(IFA_ADDRESS);
      if (!family || !bytes) continue;
      options.onEvent({
        type: msg.type === RTM_NEWADDR ? 'added' : 'removed',
        family,
        address: ipText(bytes),
        prefixlen: msg.payload.readUInt8(1),
        ifindex: msg.payload.readUInt32LE(4),
        label: attrText(attrs.get(IFA_LABEL)),
      });
    }
  }
}
