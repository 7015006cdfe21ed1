/**
 * `ciliate bpf …`: inspecting the kernel side directly.
 * @module
 */
import type { Command } from 'commander';
import { formatFeatureReport, probeAll } from '../ebpf/index.ts';
import { outputOption, type OutputFormat } from './output.ts';
import { registerBpfMapCommands } from './agent.ts';
import { registerBpfLbCommand } from './service.ts';

export function registerBpfCommands(program: Command): void {
  const bpf = program.command('bpf').description('inspect eBPF state and kernel support');
  bpf
    .command('features')
    .description('probe which eBPF map types, program types, attach points and helpers this kernel supports')
    .addOption(outputOption())
    .action((options: { output: OutputFormat }) => {
      const report = probeAll();
      process.stdout.write(options.output === 'json' ? `${JSON.stringify(report, null, 2)}\n` : `${formatFeatureReport(report)}\n`);
    });
  registerBpfMapCommands(bpf);
  registerBpfLbCommand(bpf);
}
