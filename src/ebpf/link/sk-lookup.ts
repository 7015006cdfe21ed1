/**
 * Socket lookup programs (BPF_SK_LOOKUP) on a network namespace: they run whenever the stack looks
 * for a listening (or unconnected UDP) socket for a packet arriving in that namespace, before its
 * own listeners, and may give it one from a SOCKMAP or SOCKHASH. Several may be attached to one
 * namespace; the first that assigns a socket decides. The link goes away with the namespace.
 * @module
 */
import { closeSync, openSync } from 'node:fs';
import { BpfError } from '../errors.ts';
import { AttachType } from '../internal/constants.ts';
import type { Program } from '../program.ts';
import { Link, createLink } from './link.ts';

export interface SkLookupOptions {
  /** The namespace, as a file: /run/netns/NAME, /proc/PID/ns/net. Defaults to this thread's. */
  netns?: string;
}

/** @example attachSkLookup(obj.program('cil_proxy_lookup')).pin('/sys/fs/bpf/ciliate/proxy/sk-lookup') */
export function attachSkLookup(program: Program, options: SkLookupOptions = {}): Link {
  const netns = options.netns ?? '/proc/thread-self/ns/net';
  let nsFd: number;
  try {
    nsFd = openSync(netns, 'r');
  } catch (error) {
    throw new BpfError('ERR_NOT_FOUND', `attaching ${program.name} to network namespace ${netns}: cannot open it (${(error as Error).message})`, { cause: error });
  }
  try {
    const fd = createLink(program.fd, nsFd, AttachType.SK_LOOKUP, 0, `attaching ${program.name} to network namespace ${netns}`);
    return new Link(fd, `sk_lookup link of ${program.name} on ${netns}`);
  } finally {
    closeSync(nsFd);
  }
}
