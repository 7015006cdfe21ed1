/**
 * `ciliate fqdn cache list`: the names the agent's DNS proxy learned from the answers it forwarded,
 * with their addresses and what remains of their TTL (Cilium's `cilium fqdn cache list`).
 * @module
 */
import type { Command } from 'commander';
import { AgentClient } from '../agent/index.ts';
import { formatTable, outputOption, printOutput, socketOption, type OutputFormat } from './output.ts';

interface CacheEntry {
  endpoint: number;
  name: string;
  ip: string;
  ttl: number;
  expiresAt: string;
}

export function registerFqdnCommands(program: Command): void {
  const fqdn = program.command('fqdn').description("DNS-based policy: the DNS proxy's FQDN cache");
  const cache = fqdn.command('cache').description('names learned from DNS answers, behind toFQDNs');
  cache
    .command('list')
    .description('every learned name, its address and remaining TTL, per endpoint')
    .option('--endpoint <id>', 'only this endpoint')
    .option('--name <name>', 'only this name')
    .addOption(socketOption())
    .addOption(outputOption())
    .action(async (options: { socket: string; output: OutputFormat; endpoint?: string; name?: string }) => {
      const entries = (await new AgentClient(options.socket).get<CacheEntry[]>('/v1/fqdn/cache')).filter(
        (e) => (options.endpoint === undefined || String(e.endpoint) === options.endpoint) && (options.name === undefined || e.name === options.name.toLowerCase().replace(/\.$/, '')),
      );
      printOutput(options.output, entries, () =>
        formatTable(
          ['ENDPOINT', 'NAME', 'IP', 'TTL', 'EXPIRES'],
          entries.map((e) => [String(e.endpoint), e.name, e.ip, `${e.ttl}s`, e.expiresAt]),
        ),
      );
    });
}
