#!/usr/bin/env node
/**
 * The `ciliate` command line. Each subcommand lives in its own module; this file only wires
 * them into commander and turns typed errors into one clear line and an exit code.
 * @module
 */
import { Command } from 'commander';
import { CodedError } from '../errors/index.ts';
import { registerBpfCommands } from './bpf.ts';
import { registerDemoCommand } from './demo.ts';
import { registerAgentCommands } from './agent.ts';
import { registerCniCommands } from './cni.ts';
import { registerCompletionCommand } from './completion.ts';
import { registerFqdnCommands } from './fqdn.ts';
import { registerLbCommands } from './lb.ts';
import { registerObserveCommand } from './observe.ts';
import { registerPolicyCommands } from './policy.ts';
import { registerRelayCommand } from './relay.ts';
import { registerRuntimeCommands } from './runtime.ts';
import { registerServiceCommands } from './service.ts';

export function buildProgram(): Command {
  const program = new Command('ciliate')
    .description('Networking, security and observability for containers, on a real eBPF datapath')
    .showHelpAfterError()
    .configureOutput({ outputError: (text, write) => write(text) });
  registerBpfCommands(program);
  registerDemoCommand(program);
  registerAgentCommands(program);
  registerCniCommands(program);
  registerPolicyCommands(program);
  registerFqdnCommands(program);
  registerServiceCommands(program);
  registerLbCommands(program);
  registerObserveCommand(program);
  registerRelayCommand(program);
  registerRuntimeCommands(program);
  registerCompletionCommand(program);
  return program;
}

async function main(argv: string[]): Promise<void> {
  try {
    await buildProgram().parseAsync(argv);
  } catch (error) {
    // A coded error of any family (the eBPF library's too) says what failed and why: one line, no stack.
    if (CodedError.is(error) || isPlainError(error)) {
      process.stderr.write(`ciliate: ${error.message}\n`);
      process.exitCode = 1;
      return;
    }
    throw error;
  }
}

/** Errors the CLI raises itself about its input (unreadable files, bad flags): one line, no stack. */
function isPlainError(error: unknown): error is Error {
  return error instanceof Error && error.constructor === Error;
}

if (import.meta.main) await main(process.argv);
