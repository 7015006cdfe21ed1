/**
 * podman as a real CNI client for end-to-end tests (Debian podman 4.3 with the CNI network
 * backend and runc). Everything podman keeps (storage, run root, tmp dir, events log,
 * containers.conf, storage.conf, the CNI config dir and our plugin's bin dir) lives in one temp
 * dir per test, so tests never see or touch the host's containers, images or networks. Images
 * come from a local busybox rootfs: no registry pulls.
 *
 * Create the PodmanEnv before the TestNode whose agent it talks to: node:test runs `after`
 * hooks in the order they were registered, so the containers are removed (CNI DEL) while that
 * agent is still up.
 * @module
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, copyFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { TestContext } from 'node:test';
import { installCni } from '../../src/cni/index.ts';
import { uniqueName } from './cluster.ts';

const run = promisify(execFile);

/** Debian's CNI plugins (loopback, bridge, …), searched after our plugin's dir. */
export const SYSTEM_CNI_PLUGIN_DIR = '/usr/lib/cni';
/** Where libcni caches ADD results, by network name: `results/<network>-<container>-<ifname>`. */
const CNI_CACHE_DIR = '/var/lib/cni';
const BUSYBOX = '/bin/busybox';
export const BUSYBOX_IMAGE = 'localhost/busybox:local';

export interface PodmanResult {
  stdout: string;
  stderr: string;
}

/** The parts of `podman inspect <container>` the tests use. */
export interface ContainerInspect {
  Id: string;
  Name: string;
  State: { Status: string; Running: boolean; Pid: number };
  NetworkSettings: {
    SandboxKey: string;
    Networks?: Record<string, { IPAddress: string; IPPrefixLen: number; Gateway: string; MacAddress: string }>;
  };
}

/** Why podman cannot be used here, or undefined when it can. */
export function podmanUnavailable(): string | undefined {
  for (const binary of ['/usr/bin/podman', '/usr/bin/conmon', '/usr/sbin/runc', BUSYBOX, `${SYSTEM_CNI_PLUGIN_DIR}/loopback`]) {
    if (!existsSync(binary)) return `${binary} is missing (scripts/setup.sh installs podman, runc, containernetworking-plugins, busybox-static)`;
  }
  return undefined;
}

export class PodmanEnv {
  readonly dir: string;
  readonly confDir: string;
  readonly binDir: string;
  readonly env: NodeJS.ProcessEnv;
  /** CNI networks this env defined; their cache files and iptables chains are cleaned up. */
  readonly networks: string[] = [];

  private constructor(dir: string) {
    this.dir = dir;
    this.confDir = join(dir, 'net.d');
    this.binDir = join(dir, 'cni-bin');
    for (const sub of [join(dir, 'root'), join(dir, 'runroot'), join(dir, 'tmp'), this.confDir, this.binDir]) mkdirSync(sub, { recursive: true });
    const containersConf = join(dir, 'containers.conf');
    writeFileSync(
      containersConf,
      [
        '[containers]',
        // The sandbox lacks CAP_SYS_RESOURCE and podman's default ulimits exceed its hard limits.
        'default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]',
        '[engine]',
        // crun 1.8 fails here ("cgroups in hybrid mode not supported"); PID 1 is not systemd.
        'runtime = "runc"',
        'cgroup_manager = "cgroupfs"',
        'events_logger = "file"',
        `events_logfile_path = ${JSON.stringify(join(dir, 'events.log'))}`,
        `tmp_dir = ${JSON.stringify(join(dir, 'tmp'))}`,
        `volume_path = ${JSON.stringify(join(dir, 'volumes'))}`,
        `static_dir = ${JSON.stringify(join(dir, 'root', 'libpod'))}`,
        '[network]',
        'network_backend = "cni"',
        `network_config_dir = ${JSON.stringify(this.confDir)}`,
        `cni_plugin_dirs = ${JSON.stringify([this.binDir, SYSTEM_CNI_PLUGIN_DIR])}`,
        '',
      ].join('\n'),
    );
    const storageConf = join(dir, 'storage.conf');
    // vfs: no overlay mounts to leak if a test dies half-way; the busybox layer is 2 MB.
    writeFileSync(storageConf, ['[storage]', 'driver = "vfs"', `graphroot = ${JSON.stringify(join(dir, 'root'))}`, `runroot = ${JSON.stringify(join(dir, 'runroot'))}`, ''].join('\n'));
    this.env = { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', CONTAINERS_CONF: containersConf, CONTAINERS_STORAGE_CONF: storageConf, TMPDIR: join(dir, 'tmp') };
  }

  /** A fresh podman environment in a temp dir, removed (with its containers) when the test ends. */
  static create(t: TestContext): PodmanEnv {
    const missing = podmanUnavailable();
    if (missing) throw new Error(`podman cannot run: ${missing}`);
    const env = new PodmanEnv(mkdtempSync(join(tmpdir(), 'ciliate-podman-')));
    t.after(() => env.cleanup());
    return env;
  }

  /** Runs podman with this env's configuration; throws with podman's stderr on failure. */
  async podman(args: string[], timeoutMs = 30_000): Promise<PodmanResult> {
    try {
      const { stdout, stderr } = await run('podman', args, { env: this.env, timeout: timeoutMs, encoding: 'utf8', maxBuffer: 16 << 20 });
      return { stdout, stderr };
    } catch (error) {
      const e = error as { stderr?: string; stdout?: string; message: string };
      throw new Error(`podman ${args.join(' ')} failed: ${e.stderr?.trim() || e.message}`);
    }
  }

  /**
   * Installs the Ciliate plugin into this env's CNI dirs with a network of a unique name
   * talking to the agent at `socketPath`, and returns the network name.
   */
  addCiliateNetwork(socketPath: string, network = uniqueName('ciliate-pm')): string {
    installCni({ binDir: this.binDir, confDir: this.confDir, network, socketPath });
    this.networks.push(network);
    return network;
  }

  /** Builds a rootfs of /bin/busybox and its applet links and imports it as BUSYBOX_IMAGE. */
  async importBusybox(): Promise<string> {
    const rootfs = join(this.dir, 'rootfs');
    for (const sub of ['bin', 'etc', 'proc', 'sys', 'dev', 'tmp', 'www', 'root']) mkdirSync(join(rootfs, sub), { recursive: true });
    copyFileSync(BUSYBOX, join(rootfs, 'bin', 'busybox'));
    const { stdout } = await run(BUSYBOX, ['--list'], { encoding: 'utf8' });
    for (const applet of stdout.split('\n').filter((name) => name && name !== 'busybox')) symlinkSync('busybox', join(rootfs, 'bin', applet));
    writeFileSync(join(rootfs, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n');
    writeFileSync(join(rootfs, 'etc', 'group'), 'root:x:0:\nnogroup:x:65534:\n');
    const tarball = join(this.dir, 'rootfs.tar');
    await run('tar', ['-C', rootfs, '-cf', tarball, '.']);
    await this.podman(['import', '--change', 'CMD=["/bin/sh"]', '--change', 'ENV=PATH=/bin', tarball, BUSYBOX_IMAGE]);
    return BUSYBOX_IMAGE;
  }

  /** `podman run -d` on `network`; returns the full container id. */
  async run(name: string, network: string, command: string[], options: { image?: string; extraArgs?: string[] } = {}): Promise<string> {
    const { stdout } = await this.podman(['run', '-d', '--name', name, '--hostname', name, '--network', network, ...(options.extraArgs ?? []), options.image ?? BUSYBOX_IMAGE, ...command]);
    return stdout.trim().split('\n').at(-1) ?? '';
  }

  /** `podman exec`; returns stdout, throws with stderr on a non-zero exit. */
  async exec(container: string, command: string[], timeoutMs = 20_000): Promise<string> {
    return (await this.podman(['exec', container, ...command], timeoutMs)).stdout;
  }

  async inspect(container: string): Promise<ContainerInspect> {
    const [info] = JSON.parse((await this.podman(['container', 'inspect', container])).stdout) as ContainerInspect[];
    return info;
  }

  /** The container's address on `network` as podman reports it from the CNI result. */
  async ip(container: string, network: string): Promise<string> {
    const address = (await this.inspect(container)).NetworkSettings.Networks?.[network]?.IPAddress;
    if (!address) throw new Error(`podman inspect shows no address on ${network} for ${container}`);
    return address;
  }

  /** `podman rm -f -t 0` (busybox httpd as PID 1 ignores SIGTERM); runs CNI DEL. */
  async rm(...containers: string[]): Promise<void> {
    if (containers.length) await this.podman(['rm', '-f', '-t', '0', ...containers]);
  }

  async containerIds(): Promise<string[]> {
    return (await this.podman(['ps', '-aq', '--no-trunc'])).stdout.split('\n').filter(Boolean);
  }

  /**
   * Removes every container of this env (its storage is ours alone), then what podman and
   * libcni leave outside the temp dir for our networks, then the temp dir.
   */
  async cleanup(): Promise<void> {
    const problems: string[] = [];
    try {
      const ids = await this.containerIds();
      if (ids.length) await this.podman(['rm', '-f', '-t', '0', ...ids], 60_000);
    } catch (error) {
      problems.push((error as Error).message);
    }
    for (const network of this.networks) {
      removeCniCache(network);
      await removeCniChains(network).catch((error: Error) => problems.push(error.message));
    }
    await unmountUnder(this.dir);
    try {
      rmSync(this.dir, { recursive: true, force: true });
    } catch (error) {
      problems.push((error as Error).message);
    }
    if (problems.length) console.error(`podman cleanup: ${problems.join('; ')}`);
  }
}

/** libcni's cached results and host-local leases for `network` (only files of that name). */
function removeCniCache(network: string): void {
  const results = join(CNI_CACHE_DIR, 'results');
  if (existsSync(results)) {
    for (const file of readdirSync(results)) if (file.startsWith(`${network}-`)) rmSync(join(results, file), { force: true });
  }
  rmSync(join(CNI_CACHE_DIR, 'networks', network), { recursive: true, force: true });
}

/**
 * CNI-* iptables chains that name `network` in their rule comments (the bridge/portmap/firewall
 * plugins write `name: "<network>" id: "<container>"`): unhooked and deleted, only if present.
 */
export async function removeCniChains(network: string): Promise<void> {
  for (const table of ['nat', 'filter']) {
    let dump: string;
    try {
      dump = (await run('iptables-save', ['-t', table], { encoding: 'utf8' })).stdout;
    } catch {
      return; // no iptables here: nothing can have been added
    }
    const chains = new Set<string>();
    for (const line of dump.split('\n')) {
      if (!line.includes(`name: \\"${network}\\"`) && !line.includes(`name: "${network}"`)) continue;
      const match = /^-A (CNI-\S+)/.exec(line) ?? /-j (CNI-\S+)/.exec(line);
      if (match) chains.add(match[1]);
    }
    if (!chains.size) continue;
    for (const line of dump.split('\n')) {
      const jump = /^-A (\S+) (.*)-j (CNI-\S+)/.exec(line);
      if (jump && chains.has(jump[3])) await run('iptables', ['-t', table, '-D', ...splitRule(line.slice(3))]).catch(() => undefined);
    }
    for (const chain of chains) {
      await run('iptables', ['-t', table, '-F', chain]).catch(() => undefined);
      await run('iptables', ['-t', table, '-X', chain]).catch(() => undefined);
    }
  }
}

/** Splits an iptables-save rule into arguments, keeping quoted comments whole. */
function splitRule(rule: string): string[] {
  const args: string[] = [];
  for (const match of rule.matchAll(/"((?:[^"\\]|\\.)*)"|(\S+)/g)) args.push(match[1] !== undefined ? match[1].replace(/\\"/g, '"') : match[2]);
  return args;
}

/** Lazily unmounts anything podman left mounted below `dir` (deepest first). */
async function unmountUnder(dir: string): Promise<void> {
  const mounts = readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .map((line) => line.split(' ')[1]?.replace(/\\040/g, ' '))
    .filter((target): target is string => !!target && target.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
  for (const target of mounts) await run('umount', ['-l', target]).catch(() => undefined);
}
