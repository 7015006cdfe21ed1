/**
 * BPF links: the kernel object that keeps a program attached. Closing the last fd of an unpinned
 * link detaches the program; a pinned link stays attached until its pin is removed, which is how
 * the datapath outlives the agent.
 * @module
 */
import { rmSync } from 'node:fs';
import { BpfError } from '../errors.ts';
import { objGet, objInfo, objPin } from '../map.ts';
import { BpfCommand, LinkType } from '../internal/constants.ts';
import { LinkCreateAttr, LinkDetachAttr, LinkInfo, LinkUpdateAttr } from '../internal/attr.ts';
import { bpf, bpfAsync, close } from '../internal/sys.ts';

export interface LinkInfoData {
  type: LinkType;
  id: number;
  programId: number;
  /** tcx and xdp links: the interface. */
  ifindex?: number;
  /** tcx, cgroup and netns links. */
  attachType?: number;
  /** cgroup links. */
  cgroupId?: bigint;
  /** netns links (sk_lookup): the namespace's inode number, 0 once it is gone. */
  netnsIno?: number;
}

export class Link implements Disposable {
  readonly fd: number;
  readonly description: string;
  #closed = false;

  constructor(fd: number, description: string) {
    this.fd = fd;
    this.description = description;
  }

  /** Opens a pinned link, e.g. one a previous agent left attached. */
  static openPinned(path: string): Link {
    return new Link(objGet(path, `opening pinned link ${path}`), `pinned link ${path}`);
  }

  info(): LinkInfoData {
    return linkInfo(this.fd);
  }

  /** Pins the link so the program stays attached after this process exits. */
  pin(path: string): void {
    objPin(this.fd, path, `pinning ${this.description} at ${path}`);
  }

  /**
   * Swaps the attached program for `program` in one step (BPF_LINK_UPDATE): no packet meets the
   * hook empty in between, which detach-and-attach could not promise.
   */
  update(program: { fd: number; name: string }): void {
    const attr = Buffer.alloc(LinkUpdateAttr.size);
    attr.writeUInt32LE(this.fd, LinkUpdateAttr.linkFd);
    attr.writeUInt32LE(program.fd, LinkUpdateAttr.newProgFd);
    bpf(BpfCommand.LINK_UPDATE, attr, `replacing the program of ${this.description} with ${program.name}`);
  }

  /**
   * Detaches the program now, even if the link is pinned elsewhere; the link object lingers
   * (defunct) until its last fd and pin are gone.
   */
  detach(): void {
    bpf(BpfCommand.LINK_DETACH, this.#detachAttr(), `detaching ${this.description}`);
  }

  /**
   * detach() on libuv's thread pool: detaching a TCX link waits out an RCU grace period in the
   * kernel (holding RTNL), which would otherwise stall the event loop for as long.
   */
  async detachAsync(): Promise<void> {
    await bpfAsync(BpfCommand.LINK_DETACH, this.#detachAttr(), `detaching ${this.description}`);
  }

  #detachAttr(): Buffer {
    const attr = Buffer.alloc(LinkDetachAttr.size);
    attr.writeUInt32LE(this.fd, LinkDetachAttr.linkFd);
    return attr;
  }

  /** Releases this process's hold; the program stays attached only if the link is pinned. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    close(this.fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** Removes a pin and detaches the link behind it. Missing pins are fine: unpinning is idempotent. */
export function unpinLink(path: string): void {
  const link = openPinnedOrRemove(path);
  if (!link) return;
  try {
    link.detach();
  } catch (error) {
    detachRefused(error);
  } finally {
    link.close();
    rmSync(path, { force: true });
  }
}

/** unpinLink() with the detach on libuv's thread pool (see Link.detachAsync). */
export async function unpinLinkAsync(path: string): Promise<void> {
  const link = openPinnedOrRemove(path);
  if (!link) return;
  try {
    await link.detachAsync();
  } catch (error) {
    detachRefused(error);
  } finally {
    link.close();
    rmSync(path, { force: true });
  }
}

/** The link pinned at `path`; undefined (and whatever is at `path` removed) when there is none. */
function openPinnedOrRemove(path: string): Link | undefined {
  try {
    return Link.openPinned(path);
  } catch {
    rmSync(path, { force: true });
    return undefined;
  }
}

/**
 * Perf-event, raw-tracepoint and tracing links cannot be detached explicitly; dropping the pin and
 * our fd releases their last reference, which detaches them. Anything else is rethrown.
 */
function detachRefused(error: unknown): void {
  if (!BpfError.is(error, 'ERR_NOT_SUPPORTED')) throw error;
}

export function linkInfo(fd: number): LinkInfoData {
  const info = objInfo(fd, LinkInfo.size, `reading info of link fd ${fd}`);
  const type = info.readUInt32LE(LinkInfo.type) as LinkType;
  const out: LinkInfoData = { type, id: info.readUInt32LE(LinkInfo.id), programId: info.readUInt32LE(LinkInfo.progId) };
  if (type === LinkType.TCX || type === LinkType.NETKIT) {
    out.ifindex = info.readUInt32LE(LinkInfo.union);
    out.attachType = info.readUInt32LE(LinkInfo.union + 4);
  } else if (type === LinkType.XDP) {
    out.ifindex = info.readUInt32LE(LinkInfo.union);
  } else if (type === LinkType.CGROUP) {
    out.cgroupId = info.readBigUInt64LE(LinkInfo.union);
    out.attachType = info.readUInt32LE(LinkInfo.union + 8);
  } else if (type === LinkType.NETNS) {
    out.netnsIno = info.readUInt32LE(LinkInfo.union);
    out.attachType = info.readUInt32LE(LinkInfo.union + 4);
  }
  return out;
}

/** BPF_LINK_CREATE with the common fields; `fill` writes the attach-type-specific part. */
export function createLink(
  programFd: number,
  target: number,
  attachType: number,
  flags: number,
  context: string,
  fill?: (attr: Buffer) => void,
): number {
  return bpf(BpfCommand.LINK_CREATE, linkCreateAttr(programFd, target, attachType, flags, fill), context);
}

/**
 * createLink() on libuv's thread pool, for attach types whose attach waits for an RCU grace
 * period (TCX); the target (an ifindex) is resolved in the network namespace open as `netnsFd`.
 */
export function createLinkAsync(
  programFd: number,
  target: number,
  attachType: number,
  flags: number,
  context: string,
  netnsFd: number,
  fill?: (attr: Buffer) => void,
): Promise<number> {
  const attr = linkCreateAttr(programFd, target, attachType, flags, fill);
  return bpfAsync(BpfCommand.LINK_CREATE, attr, context, attr.length, netnsFd);
}

function linkCreateAttr(programFd: number, target: number, attachType: number, flags: number, fill?: (attr: Buffer) => void): Buffer {
  const attr = Buffer.alloc(LinkCreateAttr.size);
  attr.writeUInt32LE(programFd, LinkCreateAttr.progFd);
  attr.writeUInt32LE(target, LinkCreateAttr.target);
  attr.writeUInt32LE(attachType, LinkCreateAttr.attachType);
  attr.writeUInt32LE(flags, LinkCreateAttr.flags);
  fill?.(attr);
  return attr;
}
