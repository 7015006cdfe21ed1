/**
 * `ciliate policy …`: import, list, get, delete, wait and trace network policies on a running agent.
 * @module
 */
import { type Command, Option } from 'commander';
import { AgentClient, type ImportResult } from '../agent/index.ts';
import { formatIssue, formatSkipped } from '../policy/index.ts';
import { formatTable, outputOption, readYamlRequest, type OutputFormat } from './output.ts';

function socketOption(): Option {
  return new Option('--socket <path>', 'agent API socket').env('CILIATE_SOCKET_PATH').default('/var/run/ciliate/ciliate.sock');
}

interface ListedRule {
  key: string;
  id?: number;
  rule: { kind: string; namespace?: string; name: string; sourceFile?: string; ingress: unknown[]; egress: unknown[]; ingressDeny: unknown[]; egressDeny: unknown[] };
}

interface TraceView {
  allowed: boolean;
  verdict: string;
  decidedBy: string;
  srcIdentity: number;
  dstIdentity: number;
  ruleKeys: string[];
  reason: string;
  egress?: { reason: string };
  ingress?: { reason: string };
}

export function registerPolicyCommands(program: Command): void {
  const policy = program.command('policy').description('network policy (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy)');

  policy
    .command('import <files...>')
    .description('validate and import policy YAML; a file with any invalid document is rejected whole')
    .addOption(socketOption())
    .addOption(outputOption())
    .action(async (files: string[], options: { socket: string; output: OutputFormat }) => {
      const client = new AgentClient(options.socket);
      const results = [];
      for (const file of files) {
        const yaml = readYamlRequest(file);
        results.push({ file, ...(await client.call<ImportResult>('POST', '/v1/policies', { yaml, file })) });
      }
      if (options.output === 'json') process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
      else {
        for (const r of results) {
          for (const warning of r.warnings ?? []) process.stderr.write(`warning: ${formatIssue(warning)}\n`);
          process.stdout.write(`${r.file}: imported ${r.rules.join(', ')}\n`);
          for (const skipped of r.skipped ?? []) process.stdout.write(`${r.file}: skipped ${formatSkipped(skipped)}: not a policy\n`);
          process.stdout.write(`revision: ${r.revision}\n`);
        }
      }
    });

  const list = (options: { socket: string; output: OutputFormat }, key?: string) =>
    new AgentClient(options.socket).get<ListedRule[]>('/v1/policies').then((rules) => {
      const shown = key ? rules.filter((r) => r.key === key || r.key.startsWith(`${key}#`)) : rules;
      if (key && shown.length === 0) throw new Error(`no policy ${key}`);
      process.stdout.write(
        `${options.output === 'json' ? JSON.stringify(key ? shown.map((r) => r.rule) : shown, null, 2) : formatTable(
          ['KEY', 'ID', 'INGRESS', 'EGRESS', 'INGRESS DENY', 'EGRESS DENY', 'SOURCE'],
          shown.map((r) => [r.key, String(r.id ?? ''), String(r.rule.ingress.length), String(r.rule.egress.length), String(r.rule.ingressDeny.length), String(r.rule.egressDeny.length), r.rule.sourceFile ?? '']),
        )}\n`,
      );
    });
  policy.command('list').addOption(socketOption()).addOption(outputOption()).action((options) => list(options));
  policy
    .command('get [key]')
    .description('policies, or one by kind/namespace/name')
    .addOption(socketOption())
    .addOption(outputOption())
    .action((key: string | undefined, options: { socket: string; output: OutputFormat }) => list(options, key));

  policy
    .command('delete <key>')
    .description('delete a policy by kind/namespace/name, e.g. CiliumNetworkPolicy/default/rule1')
    .addOption(socketOption())
    .action(async (key: string, options: { socket: string }) => {
      const result = await new AgentClient(options.socket).call<{ deleted: string[]; revision: number }>('DELETE', `/v1/policies?key=${encodeURIComponent(key)}`);
      process.stdout.write(`deleted ${result.deleted.join(', ')}\nrevision: ${result.revision}\n`);
    });

  policy
    .command('wait <revision>')
    .description(
      'return once every node registered in the store enforces the revision (an import or delete on any node printed it): ' +
        "each has applied the store's policy and identity changes up to it and written its endpoints' maps; " +
        'a node whose record is deleted does not count. On timeout, names the nodes that lag and the revision each has reached',
    )
    .option('--local', 'wait for this node only, whatever the others enforce')
    .option('--timeout <seconds>', 'give up after this long', (v) => Number(v), 30)
    .addOption(socketOption())
    .action(async (revision: string, options: { socket: string; timeout: number; local?: boolean }) => {
      const client = new AgentClient(options.socket, (options.timeout + 5) * 1000);
      const scope = options.local ? 'node' : 'cluster';
      const result = await client.get<{ revision: number; nodes?: { node: string; revision: number }[] }>(
        `/v1/policy/wait?revision=${encodeURIComponent(revision)}&timeoutMs=${options.timeout * 1000}&scope=${scope}`,
      );
      if (result.nodes) process.stdout.write(`revision ${revision} enforced on every node: ${result.nodes.map((n) => `${n.node} (at ${n.revision})`).join(', ')}\n`);
      else process.stdout.write(`revision ${revision} enforced on this node (current ${result.revision})\n`);
    });

  policy
    .command('trace')
    .description('would this connection be allowed, and which rules decide it?')
    .requiredOption('--src <peer>', 'endpoint id, pod name (ns/name), IP/CIDR, or labels app=web,org=empire')
    .requiredOption('--dst <peer>', 'the same forms as --src')
    .requiredOption('--dport <port/proto>', 'destination port and protocol, e.g. 80/TCP')
    .addOption(socketOption())
    .addOption(outputOption())
    .action(async (options: { src: string; dst: string; dport: string; socket: string; output: OutputFormat }) => {
      const match = /^(\d+)(?:\/(TCP|UDP|SCTP|ICMP))?$/i.exec(options.dport);
      if (!match) throw new Error(`--dport "${options.dport}": want PORT or PORT/PROTOCOL, e.g. 80/TCP`);
      const trace = await new AgentClient(options.socket).call<TraceView>('POST', '/v1/policy/trace', {
        src: options.src,
        dst: options.dst,
        dport: Number(match[1]),
        protocol: (match[2] ?? 'TCP').toUpperCase(),
      });
      if (options.output === 'json') {
        process.stdout.write(`${JSON.stringify(trace, null, 2)}\n`);
        return;
      }
      const lines = [
        `${options.src} (identity ${trace.srcIdentity}) -> ${options.dst} (identity ${trace.dstIdentity}) ${options.dport}`,
        `egress:  ${trace.egress?.reason ?? 'not a local endpoint: no egress policy here'}`,
        `ingress: ${trace.ingress?.reason ?? 'not a local endpoint: no ingress policy here'}`,
        `verdict: ${trace.verdict.toUpperCase()} (decided at ${trace.decidedBy})`,
        `rules:   ${trace.ruleKeys.length ? trace.ruleKeys.join(', ') : '(none)'}`,
      ];
      process.stdout.write(`${lines.join('\n')}\n`);
      if (!trace.allowed) process.exitCode = 1;
    });
}
