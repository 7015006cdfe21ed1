/**
 * A test "pod" for socket enforcement: its own network namespace (a listener on a non-loopback
 * address of its own, port 8080), its own cgroup v2 (where the enforcement hooks are attached,
 * never the machine's root), and two copies of one client binary (bash, whose /dev/tcp connects)
 * at different paths: the pod's application and another of its binaries. `close()` removes all
 * of it.
 * @module
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { chmodSync, copyFileSync, mkdirSync, rmSync, rmdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

const CGROUP_ROOT = '/sys/fs/cgroup/unified';

export interface RunResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')}: ${r.stderr}`);
}

/** Adds a network namespace with lo up and `address`/24 on a veth of its own. */
export function addNetns(name: string, address: string): number {
  run('ip', ['netns', 'add', name]);
  run('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
  // An address that is not loopback (this kernel has no dummy links: a veth pair, both ends here).
  run('ip', ['-n', name, 'link', 'add', 'v0', 'type', 'veth', 'peer', 'name', 'v1']);
  run('ip', ['-n', name, 'addr', 'add', `${address}/24`, 'dev', 'v0']);
  run('ip', ['-n', name, 'link', 'set', 'v0', 'up']);
  run('ip', ['-n', name, 'link', 'set', 'v1', 'up']);
  return statSync(`/run/netns/${name}`).ino;
}

export class TestPod {
  readonly id = randomBytes(3).toString('hex');
  readonly cgroup = join(CGROUP_ROOT, `ciliate-rtnet-${this.id}`);
  readonly netns = `rtnet-${this.id}`;
  readonly dir = `/tmp/ciliate-rtnet-${this.id}`;
  readonly appBinary = join(this.dir, 'app', 'client');
  readonly otherBinary = join(this.dir, 'tools', 'client');
  readonly server = `10.77.${randomBytes(1)[0]}.1`;
  netnsInode = 0;
  #listener: ChildProcess | undefined;
  readonly #extraNetns: string[] = [];

  /** Makes the namespace, cgroup, binaries and listener. */
  async open(): Promise<void> {
    mkdirSync(this.cgroup);
    this.netnsInode = addNetns(this.netns, this.server);
    for (const binary of [this.appBinary, this.otherBinary]) {
      mkdirSync(join(binary, '..'), { recursive: true });
      copyFileSync('/bin/bash', binary);
      chmodSync(binary, 0o755);
    }
    // The destination, in the pod's namespace but outside the enforced cgroup: accepts and closes.
    this.#listener = spawn('ip', ['netns', 'exec', this.netns, process.execPath, '-e', "require('net').createServer((s) => { s.on('error', () => {}); s.end('hi'); }).listen(8080, '0.0.0.0', () => console.log('up'))"], { stdio: ['ignore', 'pipe', 'inherit'] });
    await once(this.#listener.stdout!, 'data');
  }

  /** Another pod's namespace holding the same address, nobody listening; removed by close(). */
  otherPodNetns(): string {
    const name = `${this.netns}-b`;
    this.#extraNetns.push(name);
    addNetns(name, this.server);
    return name;
  }

  /**
   * Joins the enforced cgroup, enters `netns` (nsenter: `ip netns exec` would remount /sys and
   * hide the cgroup) and execs `binary` with `args`.
   */
  run(binary: string, args: string[], netns = this.netns): RunResult {
    const r = spawnSync('/bin/sh', ['-c', `echo $$ > ${this.cgroup}/cgroup.procs && exec nsenter --net=/run/netns/${netns} -- "$@"`, 'sh', binary, ...args], { encoding: 'utf8', timeout: 20_000 });
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  }

  /** `binary` (a bash copy) opens a TCP connection to `address`:8080; stdout says `connected`. */
  connect(binary: string, address = this.server, netns = this.netns): RunResult {
    return this.run(binary, ['-c', `exec 3<>/dev/tcp/${address}/8080 && echo connected`], netns);
  }

  /** The programs attached to the cgroup, as bpftool reads them from the kernel. */
  cgroupPrograms(): unknown[] {
    const r = spawnSync('bpftool', ['-j', 'cgroup', 'show', this.cgroup], { encoding: 'utf8' });
    return r.stdout.trim() ? (JSON.parse(r.stdout) as unknown[]) : [];
  }

  /**
   * The per-binary rule: in this pod (its network namespace), only the application binary
   * may connect to the server's port 8080; any other binary is refused with EPERM.
   */
  perBinaryPolicy(name: string): string {
    return `apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: ${name}
spec:
  kprobes:
  - call: sys_connect
    syscall: true
    args:
    - index: 0
      type: fd
    - index: 1
      type: sockaddr
    selectors:
    - matchBinaries:
      - operator: NotIn
        values: [${this.appBinary}]
      matchNamespaces:
      - namespace: Net
        operator: In
        values: ["${this.netnsInode}"]
      matchArgs:
      - index: 1
        operator: DAddr
        values: [${this.server}/32]
      - index: 1
        operator: DPort
        values: ["8080"]
      matchActions:
      - action: Override
        argError: -1
`;
  }

  close(): void {
    if (this.#listener?.exitCode === null) this.#listener.kill('SIGKILL');
    for (const name of [this.netns, ...this.#extraNetns]) spawnSync('ip', ['netns', 'del', name]);
    rmSync(this.dir, { recursive: true, force: true });
    // A cgroup stays populated for a moment after its last process exits: retry for a second.
    for (let i = 0; i < 50; i++) {
      try {
        rmdirSync(this.cgroup);
        return;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
      }
    }
  }
}
