/**
 * `xdp-lb`: packets per second and CPU per million packets through the standalone XDP load
 * balancer (bpf_xdp_lb.c: connection table, Maglev, IPIP, FIB, redirect) vs the kernel
 * forwarding the same traffic with an nftables DNAT rule (conntrack, routing, forwarding).
 *
 * Traffic is made in the kernel with BPF_PROG_TEST_RUN on live frames (xdp-trafficgen's method;
 * there is no pktgen here): 64-byte UDP frames to VIP:80 from 16 flows, "arriving" on the
 * balancer's client-facing veth. Ours: the frames are given to the balancer's program, which
 * encapsulates and redirects them to the backend's veth. Baseline: a program that only returns
 * XDP_PASS hands the same frames to the stack, where the DNAT rule sends them to the backend. In
 * both, the backend's end of the veth drops them in XDP (the sink), so what is measured is the
 * balancing and forwarding. Each topology is its own namespaces; rounds alternate; medians.
 *
 * CPU: this process's main thread is pinned to one CPU and makes the syscall; the stack, the
 * redirect and the sink's NAPI run in its context (at local_bh_enable) and are charged to it, with
 * what ksoftirqd on that CPU did added (tick accounting: no separate irq time on this kernel).
 *
 * Figures: pps_per_core (target ≥ 3× the baseline), cpu_ms_per_mpkt (target ≤ 1/10), pps (wall).
 * After the timed rounds, with the kernel's run statistics on (BPF_ENABLE_STATS: they cost each
 * run two clock reads, so never during them), program_ns_per_packet: the balancer's generator's
 * own run time per frame beside the floor's (the same restore, then a plain redirect), i.e. what
 * the balancing costs inside the program, without the redirect and delivery both share.
 * @module
 */
import { mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { attachXdp, enableRunStats, inNetns, type BpfMap, type Program } from '../src/ebpf/index.ts';
import { interfaceIndex } from '../src/ebpf/internal/sys.ts';
import { XdpLoadBalancer, XdpLbMapName, XdpLbProgram, loadXdpLb, parseXdpLbConfig } from '../src/loadbalancer/index.ts';
import { type BenchContext, median, round } from './lib.ts';
import { Cleanups, addNetns, inNs, netnsPath, sh, uniqueName } from './support/ns.ts';

export const description = 'XDP load balancer vs nftables DNAT forwarding: packets per core and CPU per million packets, live-frame traffic';

const VIP = '10.78.100.1';
const LB_ADDRESS = '10.78.0.1';
const CLIENT_ADDRESS = '10.78.0.2';
const BACKEND = '10.78.1.2';
const FLOWS = 16;
const PER_FLOW = 40_000;
const DEFAULT_ROUNDS = 5;

interface Topology {
  lbNs: string;
  backendNs: string;
  /** The frame's MACs: client's c0 → balancer's l0. */
  srcMac: string;
  dstMac: string;
}

async function mac(netns: string, dev: string): Promise<string> {
  const [link] = JSON.parse(await sh('ip', ['-n', netns, '-j', 'link', 'show', dev])) as { address: string }[];
  return link.address;
}

/** client ─ c0/l0 ─ balancer ─ lb0/eth0 ─ backend (eth0 drops everything in XDP). */
async function topology(cleanups: Cleanups, tag: string, sink: Program): Promise<Topology> {
  const client = await addNetns(cleanups, `xlbb${tag}c`);
  const lbNs = await addNetns(cleanups, `xlbb${tag}l`);
  const backendNs = await addNetns(cleanups, `xlbb${tag}b`);
  await sh('ip', ['link', 'add', 'c0', 'netns', client, 'type', 'veth', 'peer', 'name', 'l0', 'netns', lbNs]);
  await sh('ip', ['link', 'add', 'lb0', 'netns', lbNs, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', backendNs]);
  await sh('ip', ['-n', client, 'addr', 'add', `${CLIENT_ADDRESS}/24`, 'dev', 'c0']);
  await sh('ip', ['-n', lbNs, 'addr', 'add', `${LB_ADDRESS}/24`, 'dev', 'l0']);
  await sh('ip', ['-n', lbNs, 'addr', 'add', '10.78.1.1/24', 'dev', 'lb0']);
  await sh('ip', ['-n', backendNs, 'addr', 'add', `${BACKEND}/24`, 'dev', 'eth0']);
  for (const [ns, dev] of [[client, 'c0'], [lbNs, 'l0'], [lbNs, 'lb0'], [backendNs, 'eth0']]) await sh('ip', ['-n', ns, 'link', 'set', dev, 'up']);
  await inNs(lbNs, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
  // The sink answers no ARP: the balancer knows the backend's MAC from the start.
  await sh('ip', ['-n', lbNs, 'neigh', 'replace', BACKEND, 'lladdr', await mac(backendNs, 'eth0'), 'dev', 'lb0', 'nud', 'permanent']);
  const link = inNetns(netnsPath(backendNs), () => attachXdp(sink, { interface: 'eth0', mode: 'native' }));
  cleanups.defer('detach the sink', () => link.close());
  return { lbNs, backendNs, srcMac: await mac(client, 'c0'), dstMac: await mac(lbNs, 'l0') };
}

/** A 60-byte Ethernet/IPv4/UDP frame from the client to VIP:80. */
function frame(t: Topology, sport: number): Buffer {
  const b = Buffer.alloc(60);
  Buffer.from(t.dstMac.replaceAll(':', ''), 'hex').copy(b, 0);
  Buffer.from(t.srcMac.replaceAll(':', ''), 'hex').copy(b, 6);
  b.writeUInt16BE(0x0800, 12);
  const ip = 14;
  b.writeUInt8(0x45, ip);
  b.writeUInt16BE(46, ip + 2);
  b.writeUInt8(64, ip + 8);
  b.writeUInt8(17, ip + 9);
  CLIENT_ADDRESS.split('.').forEach((o, i) => b.writeUInt8(Number(o), ip + 12 + i));
  VIP.split('.').forEach((o, i) => b.writeUInt8(Number(o), ip + 16 + i));
  let sum = 0;
  for (let i = 0; i < 20; i += 2) sum += b.readUInt16BE(ip + i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >> 16);
  b.writeUInt16BE(~sum & 0xffff, ip + 10);
  b.writeUInt16BE(sport, 34);
  b.writeUInt16BE(80, 36);
  b.writeUInt16BE(26, 38); // UDP checksum 0: none
  return b;
}

/** user+system ticks of a task (/proc/<pid>/stat fields 14 and 15). */
function taskTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

function ksoftirqd(cpu: number): number {
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/comm`, 'utf8').trim() === `ksoftirqd/${cpu}`) return Number(entry);
    } catch {
      // gone meanwhile
    }
  }
  throw new Error(`no ksoftirqd/${cpu}`);
}

async function rxPackets(netns: string, dev: string): Promise<number> {
  const [link] = JSON.parse(await sh('ip', ['-n', netns, '-s', '-j', 'link', 'show', dev])) as { stats64: { rx: { packets: number } } }[];
  return link.stats64.rx.packets;
}

interface Sample {
  packets: number;
  delivered: number;
  cpuSeconds: number;
  wallSeconds: number;
}

/** A generator program and its frame template map (xlb_bench_frame: the 42 bytes of headers it restores). */
interface Generator {
  program: Program;
  frame: BpfMap;
  /** Where xlb_bench_redirect sends the frames (the floor); 0 for the others. */
  redirectIfindex?: number;
}

async function sample(t: Topology, gen: Generator, softirqPid: number): Promise<Sample> {
  const frames = Array.from({ length: FLOWS }, (_, i) => frame(t, 20_000 + i));
  const before = await rxPackets(t.backendNs, 'eth0');
  const ticks = taskTicks(softirqPid);
  const cpu = process.cpuUsage();
  const started = performance.now();
  inNetns(netnsPath(t.lbNs), () => {
    const ifindex = interfaceIndex('l0');
    for (const data of frames) {
      const template = Buffer.alloc(48);
      data.copy(template, 0, 0, 42);
      template.writeUInt32LE(gen.redirectIfindex ?? 0, 44);
      gen.frame.update(Buffer.alloc(4), template);
      gen.program.testRunLiveFrames({ data, ingressIfindex: ifindex, repeat: PER_FLOW });
    }
  });
  const wallSeconds = (performance.now() - started) / 1000;
  const used = process.cpuUsage(cpu);
  const softirq = (taskTicks(softirqPid) - ticks) / 100;
  const delivered = (await rxPackets(t.backendNs, 'eth0')) - before;
  return { packets: FLOWS * PER_FLOW, delivered, cpuSeconds: (used.user + used.system) / 1e6 + softirq, wallSeconds };
}

export async function run(ctx: BenchContext): Promise<void> {
  const rounds = ctx.rounds ?? DEFAULT_ROUNDS;
  const cleanups = new Cleanups((m) => ctx.log(m));
  const cpu = 1;
  try {
    await sh('taskset', ['-p', '-c', String(cpu), String(process.pid)]);
    const softirqPid = ksoftirqd(cpu);
    const helpers = loadXdpLb({ programs: [XdpLbProgram.BENCH_PASS, XdpLbProgram.BENCH_REDIRECT, XdpLbProgram.SINK] });
    cleanups.defer('close helper programs', () => helpers.close());
    const sink = helpers.program(XdpLbProgram.SINK);

    const ours = await topology(cleanups, 'o', sink);
    // The balancer's maps pinned, so that the bench's generator (a second load of the object) shares them.
    const pinDir = `/sys/fs/bpf/${uniqueName('ciliate-xlb-bench')}`;
    mkdirSync(pinDir);
    cleanups.defer(`rm -r ${pinDir}`, () => rmSync(pinDir, { recursive: true, force: true }));
    const lb = XdpLoadBalancer.load({ pinDir });
    cleanups.defer('close the balancer', () => lb.close());
    const generator = loadXdpLb({ pinDir, programs: [XdpLbProgram.BENCH_BALANCE] });
    cleanups.defer('close the generator', () => generator.close());
    const config = parseXdpLbConfig(
      [`interface: l0`, 'xdpMode: generic', `source: ${LB_ADDRESS}`, 'vips:', `  - { address: ${VIP}, port: 80, protocol: UDP, backends: [{ address: ${BACKEND} }] }`].join('\n'),
      'bench',
    );
    lb.apply(config, netnsPath(ours.lbNs));

    const base = await topology(cleanups, 'n', sink);
    await sh('nsenter', [`--net=${netnsPath(base.lbNs)}`, 'nft', '-f', '-'], {
      input: `table ip xlbbench {\n  chain prerouting {\n    type nat hook prerouting priority -100;\n    ip daddr ${VIP} udp dport 80 counter dnat to ${BACKEND}\n  }\n}\n`,
    });
    const pass = { program: helpers.program(XdpLbProgram.BENCH_PASS), frame: helpers.map(XdpLbMapName.BENCH_FRAME) };
    const balance = { program: generator.program(XdpLbProgram.BENCH_BALANCE), frame: generator.map(XdpLbMapName.BENCH_FRAME) };
    const floor = {
      program: helpers.program(XdpLbProgram.BENCH_REDIRECT),
      frame: helpers.map(XdpLbMapName.BENCH_FRAME),
      redirectIfindex: inNetns(netnsPath(ours.lbNs), () => interfaceIndex('lb0')),
    };

    const samples: Record<'ours' | 'nft' | 'floor', Sample[]> = { ours: [], nft: [], floor: [] };
    // A warm-up of each (conntrack entries, connection table, caches), then alternating rounds.
    await sample(ours, balance, softirqPid);
    await sample(base, pass, softirqPid);
    await sample(ours, floor, softirqPid);
    for (let r = 0; r < rounds; r++) {
      samples.ours.push(await sample(ours, balance, softirqPid));
      samples.nft.push(await sample(base, pass, softirqPid));
      samples.floor.push(await sample(ours, floor, softirqPid));
      const last = (s: Sample[]) => s.at(-1)!;
      ctx.log(`round ${r + 1}: ours ${round(last(samples.ours).delivered / last(samples.ours).cpuSeconds / 1e6, 2)} Mpps/core, nft ${round(last(samples.nft).delivered / last(samples.nft).cpuSeconds / 1e6, 2)} Mpps/core`);
    }
    const programNs: Record<'ours' | 'floor', number[]> = { ours: [], floor: [] };
    {
      using _stats = enableRunStats();
      const perPacket = (gen: Generator) => {
        const before = gen.program.info();
        return sample(ours, gen, softirqPid).then(() => {
          const after = gen.program.info();
          return Number(after.runTimeNs - before.runTimeNs) / Number(after.runCount - before.runCount);
        });
      };
      for (let r = 0; r < rounds; r++) {
        programNs.ours.push(await perPacket(balance));
        programNs.floor.push(await perPacket(floor));
      }
    }
    const stats = lb.stats();
    ctx.log(`balancer counted ${stats.vips[0].packets} packets for the VIP, drops ${JSON.stringify(stats.drops.filter((d) => d.packets > 0))}`);
    for (const [name, s] of Object.entries(samples)) {
      const delivered = s.reduce((sum, x) => sum + x.delivered, 0) / s.reduce((sum, x) => sum + x.packets, 0);
      if (delivered < 0.99) throw new Error(`${name}: only ${round(delivered * 100, 1)}% of the frames reached the backend`);
    }
    const perCore = (s: Sample[]) => median(s.map((x) => x.delivered / x.cpuSeconds));
    const cpuPerM = (s: Sample[]) => median(s.map((x) => (x.cpuSeconds * 1000) / (x.delivered / 1e6)));
    const pps = (s: Sample[]) => median(s.map((x) => x.delivered / x.wallSeconds));
    const baseline = 'kernel forwarding with an nftables DNAT rule (conntrack), same frames via XDP_PASS';
    const common = { rounds, packets_per_sample: FLOWS * PER_FLOW, flows: FLOWS, frame_bytes: 60 };
    ctx.emit({ metric: 'pps_per_core', value: round(perCore(samples.ours), 0), unit: 'packets/cpu-s', baseline, baseline_value: round(perCore(samples.nft), 0), ratio: round(perCore(samples.ours) / perCore(samples.nft), 2), better: 'higher', target: '≥ 3', met: perCore(samples.ours) / perCore(samples.nft) >= 3, ...common });
    ctx.emit({ metric: 'cpu_ms_per_mpkt', value: round(cpuPerM(samples.ours), 1), unit: 'cpu-ms/Mpkt', baseline, baseline_value: round(cpuPerM(samples.nft), 1), ratio: round(cpuPerM(samples.ours) / cpuPerM(samples.nft), 3), better: 'lower', target: '≤ 0.1', met: cpuPerM(samples.ours) / cpuPerM(samples.nft) <= 0.1, ...common });
    // What generating and delivering the frames costs in both (the floor), taken out: the
    // balancing alone against the kernel's DNAT and forwarding alone. Information, not the target.
    const net = (s: Sample[]) => cpuPerM(s) - cpuPerM(samples.floor);
    ctx.emit({ metric: 'cpu_ms_per_mpkt_net_of_generation', value: round(net(samples.ours), 1), unit: 'cpu-ms/Mpkt', baseline: `${baseline}, each less the floor (${round(cpuPerM(samples.floor), 1)} cpu-ms/Mpkt: frames redirected to the backend unbalanced)`, baseline_value: round(net(samples.nft), 1), ratio: round(net(samples.ours) / net(samples.nft), 3), better: 'lower', ...common });
    ctx.emit({ metric: 'program_ns_per_packet', value: round(median(programNs.ours), 1), unit: 'ns/packet (bpf_stats run_time_ns/run_cnt)', baseline: 'the floor\'s program: the same frame restore, then a plain redirect', baseline_value: round(median(programNs.floor), 1), ratio: round(median(programNs.ours) / median(programNs.floor), 2), balancing_ns: round(median(programNs.ours) - median(programNs.floor), 1), better: 'lower', ...common });
    ctx.emit({ metric: 'pps', value: round(pps(samples.ours), 0), unit: 'packets/s', baseline, baseline_value: round(pps(samples.nft), 0), ratio: round(pps(samples.ours) / pps(samples.nft), 2), better: 'higher', ...common });
  } finally {
    await cleanups.run();
  }
}
