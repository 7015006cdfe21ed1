/**
 * `ciliate lb --config lb.yaml`: the standalone XDP load balancer (not the agent), and
 * `ciliate lb stats` (asks the running one over its root-only socket), and
 * `ciliate lb decap` (the backend's side: opens the balancer's IPIP packets).
 * @module
 */
import { type Command, Option } from 'commander';
import { resolve } from 'node:path';
import { DEFAULT_LB_SOCKET, LbRunner, queryLb, XdpLbDecap, type XdpLbStats } from '../loadbalancer/index.ts';
import { formatTable, outputOption, printOutput, type OutputFormat } from './output.ts';

function lbSocketOption(): Option {
  return new Option('--socket <path>', 'the load balancer\'s stats socket').env('CILIATE_LB_SOCKET').default(DEFAULT_LB_SOCKET);
}

/** Resolves on SIGINT or SIGTERM. */
function untilStopped(): Promise<void> {
  return new Promise((done) => {
    process.once('SIGINT', () => done());
    process.once('SIGTERM', () => done());
  });
}

function log(message: string): void {
  process.stderr.write(`${new Date().toISOString()} lb: ${message}\n`);
}

function formatStats(stats: XdpLbStats): string {
  const vips = formatTable(
    ['VIP', 'PACKETS', 'BYTES', 'BACKENDS (in Maglev table / configured)'],
    stats.vips.map((v) => [v.vip, String(v.packets), String(v.bytes), `${v.backends.filter((b) => b.inTable).length}/${v.backends.length}`]),
  );
  const backends = formatTable(
    ['BACKEND', 'HEALTH', 'PACKETS', 'BYTES'],
    stats.backends.map((b) => [b.address, b.healthy ? 'healthy' : 'failing', String(b.packets), String(b.bytes)]),
  );
  const drops = stats.drops.filter((d) => d.packets > 0).map((d) => `dropped (${d.reason}): ${d.packets} packets`);
  return [vips, '', backends, ...drops].join('\n');
}

export function registerLbCommands(program: Command): void {
  const lb = program
    .command('lb')
    .description('standalone XDP load balancer: VIPs to backends with Maglev, IPIP to the backends, health checks')
    .option('--config <file>', 'the load balancer\'s YAML config (watched: changes are applied, bad ones refused)')
    .option('--pin-dir <dir>', 'pin the maps here (bpffs) so connections survive a restart')
    .addOption(lbSocketOption())
    .action(async (options: { config?: string; pinDir?: string; socket: string }) => {
      if (!options.config) throw new Error('lb: --config <file> is required (or a subcommand: stats, decap)');
      const runner = await LbRunner.start({ configFile: resolve(options.config), socketPath: options.socket, ...(options.pinDir ? { pinDir: options.pinDir } : {}), log });
      log(`ready; stats: ciliate lb stats --socket ${options.socket}`);
      await untilStopped();
      await runner.stop();
    });
  lb.command('stats')
    .description('packets and bytes per VIP and backend, and each backend\'s health, from the running load balancer')
    .addOption(outputOption())
    .action(async (options: { output: OutputFormat }) => {
      // --socket is lb's own option (commander gives it to the parent wherever it is written).
      const socket = (lb.opts() as { socket: string }).socket;
      const stats = JSON.parse(await queryLb(socket, '/v1/stats')) as XdpLbStats;
      printOutput(options.output, stats, () => formatStats(stats));
    });
  lb.command('decap')
    .description('on a backend: strip the outer header of the balancer\'s IPIP packets (tc ingress) until stopped')
    .requiredOption('--interface <name>', 'the backend\'s interface the balancer\'s packets arrive on')
    .requiredOption('--balancer <address...>', 'the balancers\' outer source addresses (IPIP from anyone else is not opened)')
    .action(async (options: { interface: string; balancer: string[] }) => {
      const decap = XdpLbDecap.attach({ interface: options.interface, balancers: options.balancer });
      log(`decapsulating IPIP from ${options.balancer.join(', ')} on ${options.interface}`);
      await untilStopped();
      decap.close();
    });
}
