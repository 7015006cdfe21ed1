/**
 * `ciliate cni install`: puts the plugin and a network configuration where a runtime finds them.
 * @module
 */
import type { Command } from 'commander';
import { installCni } from '../cni/index.ts';

export function registerCniCommands(program: Command): void {
  program
    .command('cni')
    .description('the CNI plugin')
    .command('install')
    .description('install the plugin binary (build/cni/ciliate-cni, from `npm run build`) and a network config list')
    .option('--bin-dir <dir>', 'CNI plugin directory', '/opt/cni/bin')
    .option('--conf-dir <dir>', 'CNI network configuration directory', '/etc/cni/net.d')
    .option('--network <name>', 'network name', 'ciliate')
    .option('--socket <path>', 'agent API socket the plugin talks to')
    .action((options: { binDir: string; confDir: string; network: string; socket?: string }) => {
      const { plugin, conflist } = installCni({ binDir: options.binDir, confDir: options.confDir, network: options.network, socketPath: options.socket });
      process.stdout.write(`installed ${plugin} and ${conflist}\n`);
    });
}
