/**
 * North-south load balancing on the node's external devices (bpf/bpf_host.c): one load of the
 * object per agent start, with the node's shared maps by pin, attached through TCX (ingress
 * cil_from_netdev, egress cil_to_netdev) to each device, with links pinned under
 * `<bpfRoot>/links/host/<device>/` so traffic keeps being translated while the agent is down. A
 * restart swaps the new programs into links still serving their device; devices no longer
 * configured lose theirs.
 * @module
 */
import { existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { attachTcx, BpfError, BpfObject, interfaceIndex, Link, unpinLink, type TcxDirection } from '../ebpf/index.ts';
import { SHARED_MAPS } from '../datapath/index.ts';
import { Addr } from '../net/index.ts';

/** The compiled object, as scripts/build-bpf.sh leaves it. */
export const HOST_OBJECT_PATH = join(import.meta.dirname, '..', '..', 'build', 'bpf', 'bpf_host.o');

/** Program names in bpf_host.o. */
export const HostProgram = { FROM_NETDEV: 'cil_from_netdev', TO_NETDEV: 'cil_to_netdev' } as const;

const ATTACHMENTS: readonly { program: string; direction: TcxDirection; pin: string }[] = [
  { program: HostProgram.FROM_NETDEV, direction: 'ingress', pin: 'from-netdev' },
  { program: HostProgram.TO_NETDEV, direction: 'egress', pin: 'to-netdev' },
];

/**
 * The devices to attach to: `devices` (comma-separated names) when given, else the one holding
 * `nodeIp`, as Cilium auto-detects its native device (none when that is loopback). Throws naming
 * what it could not find.
 */
export function resolveDevices(devices: string, nodeIp: string): string[] {
  const names = devices.split(',').map((d) => d.trim()).filter(Boolean);
  const interfaces = networkInterfaces();
  if (names.length > 0) {
    const missing = names.filter((name) => !(name in interfaces));
    if (missing.length > 0) throw new BpfError('ERR_NOT_FOUND', `devices: no interface ${missing.join(', ')} in this network namespace`);
    return names;
  }
  const holding = Object.entries(interfaces).find(([, addrs]) => addrs?.some((a) => a.family === 'IPv4' && a.address === nodeIp));
  if (!holding) throw new BpfError('ERR_NOT_FOUND', `devices: no interface holds the node address ${nodeIp}; name the external device(s) with --devices`);
  // A node address on loopback (a single node without an underlay) has no outside to serve, and
  // translating the node's own connections there would leave their replies untranslated.
  if (holding[1]?.some((a) => a.internal)) return [];
  return [holding[0]];
}

export interface HostDatapathOptions {
  bpfRoot: string;
  /** The node's address: the SNAT address of connections to backends on other nodes. */
  nodeIp: string;
  /**
   * Cilium's --bpf-lb-mode: 'snat' (a backend on another node sees this node and answers through
   * it) or 'dsr' (it sees the client and answers it directly; tunnel mode).
   */
  mode?: 'snat' | 'dsr';
  /** Defaults to HOST_OBJECT_PATH. */
  objectPath?: string;
}

/** bpf_host.o loaded and attached to the node's external devices. */
export class HostDatapath {
  readonly #obj: BpfObject;
  readonly #linksDir: string;
  readonly #links: Link[] = [];

  constructor(options: HostDatapathOptions) {
    const pinDir = join(options.bpfRoot, 'maps');
    mkdirSync(pinDir, { recursive: true });
    this.#linksDir = join(options.bpfRoot, 'links', 'host');
    this.#obj = BpfObject.load(options.objectPath ?? HOST_OBJECT_PATH, {
      constants: { NODE_IPV4: Buffer.from(Addr.parse(options.nodeIp).toBytes()).readUInt32LE(0), DSR_MODE: options.mode === 'dsr' ? 1 : 0 },
      pin: { dir: pinDir, maps: SHARED_MAPS },
    });
  }

  /** Attaches to exactly `devices` (see resolveDevices), through pinned links; detaches from the others. */
  attach(devices: readonly string[]): void {
    mkdirSync(this.#linksDir, { recursive: true });
    for (const stale of readdirSync(this.#linksDir).filter((d) => !devices.includes(d))) this.#unpinDevice(stale);
    for (const device of devices) {
      const dir = join(this.#linksDir, device);
      mkdirSync(dir, { recursive: true });
      for (const { program, direction, pin } of ATTACHMENTS) {
        const path = join(dir, pin);
        if (existsSync(path)) {
          const pinned = Link.openPinned(path);
          // Still serving the device (not a device of the same name made since): take it over.
          if (pinned.info().ifindex === ifindexOf(device)) {
            pinned.update(this.#obj.program(program));
            this.#links.push(pinned);
            continue;
          }
          pinned.close();
          unpinLink(path);
        }
        const link = attachTcx(this.#obj.program(program), { interface: device, direction });
        link.pin(path);
        this.#links.push(link);
      }
    }
  }

  /** Removes every device's links: north-south translation stops. */
  detach(): void {
    if (!existsSync(this.#linksDir)) return;
    for (const device of readdirSync(this.#linksDir)) this.#unpinDevice(device);
  }

  /** Closes the object and this process's handles; pinned links stay attached. */
  close(): void {
    for (const link of this.#links.splice(0)) link.close();
    this.#obj.close();
  }

  #unpinDevice(device: string): void {
    const dir = join(this.#linksDir, device);
    for (const { pin } of ATTACHMENTS) unpinLink(join(dir, pin));
    rmSync(dir, { recursive: true, force: true });
  }
}

function ifindexOf(device: string): number | undefined {
  try {
    return interfaceIndex(device);
  } catch {
    return undefined;
  }
}
