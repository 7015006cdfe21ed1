/**
 * The node proxy's socket lookup (bpf/bpf_proxy_lookup.c): a BPF_SK_LOOKUP program on the node's
 * network namespace that gives the proxy's listener to a SYN the stack takes through a TIME_WAIT
 * socket of its 4-tuple (bpf/lib/proxy.h, proxy_after_time_wait4). The proxy puts its listener into
 * ciliate_proxy_listeners itself. The link is pinned, so it outlives the agent as the endpoints'
 * programs do.
 * @module
 */
import { mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { BpfError, BpfObject, Link, attachSkLookup, unpinLink } from '../ebpf/index.ts';
import { MapName } from './maps.ts';

/** The compiled object, as scripts/build-bpf.sh leaves it. */
export const PROXY_LOOKUP_OBJECT_PATH = join(import.meta.dirname, '..', '..', 'build', 'bpf', 'bpf_proxy_lookup.o');

const PROGRAM = 'cil_proxy_lookup';
const THIS_NETNS = '/proc/thread-self/ns/net';

/**
 * Attaches cil_proxy_lookup to this thread's network namespace (the node's), sharing the node's
 * two maps it reads, unless a link an earlier agent pinned (at `<bpfRoot>/proxy/sk-lookup`)
 * already serves it.
 */
export function ensureProxyLookup(bpfRoot: string, objectPath = PROXY_LOOKUP_OBJECT_PATH): void {
  const pin = join(bpfRoot, 'proxy', 'sk-lookup');
  if (linkServesThisNetns(pin)) return;
  const mapsDir = join(bpfRoot, 'maps');
  mkdirSync(mapsDir, { recursive: true });
  mkdirSync(join(bpfRoot, 'proxy'), { recursive: true });
  using obj = BpfObject.load(objectPath, { pin: { dir: mapsDir, maps: [MapName.PROXY4, MapName.PROXY_LISTENERS] } });
  using link = attachSkLookup(obj.program(PROGRAM));
  unpinLink(pin);
  link.pin(pin);
}

function linkServesThisNetns(path: string): boolean {
  try {
    using link = Link.openPinned(path);
    return link.info().netnsIno === statSync(THIS_NETNS).ino;
  } catch (error) {
    if (BpfError.is(error)) return false;
    throw error;
  }
}
