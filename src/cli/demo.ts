/**
 * `ciliate demo`: the README's first command. Two network namespaces joined by a veth pair, the
 * demo program attached through TCX on both directions of one end, live per-packet events from
 * the ring buffer, and the per-protocol counters read back from a per-CPU map. Everything it
 * creates (namespaces, links, pins) is removed when it ends, also on Ctrl-C or failure.
 * @module
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import type { Command } from 'commander';
import { BpfObject, RingBuffer, attachTcx, inNetns, u32, type Link } from '../ebpf/index.ts';
import { DemoDirection, demoCounter, demoEvent } from '../datapath/index.ts';
import { formatTable } from './output.ts';

const run = promisify(execFile);
const REPO_ROOT = join(import.meta.dirname, '..', '..');
const SHARED_MAPS = ['demo_counters', 'demo_events', 'demo_events_lost'];
const PROTOCOLS: Record<number, string> = { 1: 'ICMP', 6: 'TCP', 17: 'UDP' };
const ICMP_TYPES: Record<number, string> = { 0: 'echo-reply', 3: 'unreachable', 8: 'echo-request' };

export interface DemoOptions {
  count: number;
  object: string;
}

export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .description('two network namespaces, a TCX program on their veth, live packet events and map counters')
    .option('-c, --count <n>', 'pings to send', (v) => Number.parseInt(v, 10), 5)
    .option('--object <path>', 'the demo BPF object', join(REPO_ROOT, 'build', 'bpf', 'demo.o'))
    .action(async (options: DemoOptions) => {
      await runDemo(options, (line) => process.stdout.write(`${line}\n`));
    });
}

export async function runDemo(options: DemoOptions, print: (line: string) => void): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('ciliate demo: must run as root (it creates network namespaces and loads eBPF)');
  if (!existsSync(options.object)) throw new Error(`ciliate demo: ${options.object} is missing; run \`npm run build\` first`);
  const id = randomBytes(3).toString('hex');
  const nsA = `ciliate-demo-${id}-a`;
  const nsB = `ciliate-demo-${id}-b`;
  const pinDir = `/sys/fs/bpf/ciliate-demo-${id}`;
  const cleanups: (() => Promise<void> | void)[] = [];
  const cleanup = async () => {
    for (const undo of cleanups.reverse()) {
      try {
        await undo();
      } catch {
        // keep undoing the rest
      }
    }
    cleanups.length = 0;
  };
  const onSignal = () => void cleanup().then(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    print(`creating network namespaces ${nsA} (10.200.0.1) and ${nsB} (10.200.0.2) joined by a veth pair`);
    await run('ip', ['netns', 'add', nsA]);
    cleanups.push(() => run('ip', ['netns', 'del', nsA]).then(() => undefined));
    await run('ip', ['netns', 'add', nsB]);
    cleanups.push(() => run('ip', ['netns', 'del', nsB]).then(() => undefined));
    await run('ip', ['link', 'add', `cd${id}a`, 'netns', nsA, 'type', 'veth', 'peer', 'name', `cd${id}b`, 'netns', nsB]);
    for (const [ns, dev, addr] of [[nsA, `cd${id}a`, '10.200.0.1/24'], [nsB, `cd${id}b`, '10.200.0.2/24']] as const) {
      await run('ip', ['-n', ns, 'link', 'set', dev, 'name', 'eth0']);
      await run('ip', ['-n', ns, 'addr', 'add', addr, 'dev', 'eth0']);
      await run('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
      await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    }

    // One object, loaded twice with a different .rodata constant; the copies share their maps through pins.
    mkdirSync(pinDir, { recursive: true });
    cleanups.push(() => rmSync(pinDir, { recursive: true, force: true }));
    const links: Link[] = [];
    cleanups.push(() => links.forEach((link) => link.close()));
    const objects: BpfObject[] = [];
    cleanups.push(() => objects.forEach((obj) => obj.close()));
    for (const [direction, value] of [['ingress', DemoDirection.INGRESS], ['egress', DemoDirection.EGRESS]] as const) {
      const started = performance.now();
      const obj = BpfObject.load(options.object, { constants: { DEMO_DIRECTION: value }, pin: { dir: pinDir, maps: SHARED_MAPS } });
      objects.push(obj);
      links.push(inNetns(`/run/netns/${nsB}`, () => attachTcx(obj.program('demo_observe'), { interface: 'eth0', direction })));
      print(`attached demo_observe to ${nsB}/eth0 TCX ${direction} (loaded and attached in ${(performance.now() - started).toFixed(1)} ms)`);
    }
    const maps = objects[0];
    const counters = maps.map('demo_counters').withCodecs(u32, demoCounter);
    const ring = new RingBuffer(maps.map('demo_events'), { lostCounter: maps.map('demo_events_lost') });
    cleanups.push(() => ring.close());

    print('');
    print(eventLine(['time', 'dir', 'proto', 'source', 'destination', 'info', 'bytes']));
    const t0 = process.hrtime.bigint();
    let shown = 0;
    let buffer: Buffer | undefined;
    ring.start((_view, offset, _length, bytes) => {
      buffer ??= Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      const ev = demoEvent.decode(buffer, offset);
      shown++;
      print(formatEvent(ev, t0));
    });

    print(`(pinging ${options.count} times from ${nsA}, then one UDP datagram)`);
    await run('ip', ['netns', 'exec', nsA, 'ping', '-c', String(options.count), '-i', '0.2', '-W', '1', '10.200.0.2']);
    await run('ip', ['netns', 'exec', nsA, 'bash', '-c', 'echo hello > /dev/udp/10.200.0.2/7777']);
    await new Promise((resolve) => setTimeout(resolve, 200));
    ring.consume(() => undefined);
    ring.stop();

    print('');
    print(`counters read back from the per-CPU map demo_counters (summed over CPUs):`);
    const rows: string[][] = [];
    for (const [proto, perCpu] of counters.entriesPerCpu()) {
      const packets = perCpu.reduce((sum, c) => sum + c.packets, 0);
      if (packets === 0) continue;
      rows.push([PROTOCOLS[proto] ?? String(proto), String(packets), String(perCpu.reduce((sum, c) => sum + c.bytes, 0))]);
    }
    print(formatTable(['protocol', 'packets', 'bytes'], rows));
    const stats = ring.stats();
    print('');
    print(`events: ${stats.records} read from the ring buffer, ${stats.lost} lost; ${shown} shown`);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanup();
  }
}

const EVENT_COLUMNS = [10, 4, 6, 22, 22, 13];

function eventLine(cells: readonly string[]): string {
  return cells.map((cell, i) => cell.padEnd(EVENT_COLUMNS[i] ?? 0)).join('');
}

function formatEvent(ev: ReturnType<typeof demoEvent.decode>, t0: bigint): string {
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  const proto = PROTOCOLS[ev.protocol] ?? String(ev.protocol);
  const ports = ev.protocol === 6 || ev.protocol === 17;
  return eventLine([
    `+${ms.toFixed(1)}ms`,
    ev.direction === DemoDirection.INGRESS ? 'in' : 'out',
    proto,
    ports ? `${ev.saddr}:${ev.sport}` : ev.saddr,
    ports ? `${ev.daddr}:${ev.dport}` : ev.daddr,
    ev.protocol === 1 ? (ICMP_TYPES[ev.icmp_type] ?? `type ${ev.icmp_type}`) : '',
    String(ev.length),
  ]);
}
