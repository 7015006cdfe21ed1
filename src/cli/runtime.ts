/**
 * `ciliate runtime events|status|version`: Tetragon's API as `tetra getevents|status|version`
 * reads it, from the agent's runtime module or any Tetragon. Events print in tetra's compact
 * format (or as the JSON export's lines), filtered on the server as tetra's flags filter.
 * @module
 */
import { type Command, Option } from 'commander';
import { readYamlRequest } from './output.ts';
import { POLICY_MODES, TETRAGON_DEFAULT_ADDRESS, compactLine, withPolicyMode, type PolicyMode, connectTetragon, type EventFilter, type EventTypeName } from '../runtime/index.ts';

interface EventsOptions {
  serverAddress: string;
  output: 'compact' | 'json';
  eventTypes?: string[];
  namespaces?: string[];
  processes?: string[];
  pods?: string[];
  namespace?: string[];
  process?: string[];
  pod?: string[];
  pid?: string[];
  timeout?: string;
}

const collect = (value: string, previous: string[] = []) => [...previous, ...value.split(',').filter(Boolean)];

function serverOption(): Option {
  return new Option('--server-address <address>', "Tetragon's gRPC API: host:port or unix:/path").env('CILIATE_RUNTIME_SERVER').default(TETRAGON_DEFAULT_ADDRESS);
}

/** `2s`, `500ms`, `1m`, or seconds as a bare number. */
function parseDuration(text: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(text.trim());
  if (!match) throw new Error(`--timeout "${text}": want a duration such as 2s, 500ms or 1m`);
  const value = Number(match[1]);
  return match[2] === 'ms' ? value : match[2] === 'm' ? value * 60_000 : value * 1000;
}

export function registerRuntimeCommands(program: Command): void {
  const runtime = program.command('runtime').description("process events from the runtime sensor, through Tetragon's API (as tetra)");
  runtime
    .command('events')
    .description("print events as they happen (tetra getevents): compact lines or the JSON export's")
    .addOption(serverOption())
    .addOption(new Option('-o, --output <format>', 'compact or json').choices(['compact', 'json']).default('compact'))
    .option('-e, --event-types <types>', 'event types: PROCESS_EXEC, PROCESS_EXIT (comma-separated, repeatable)', collect)
    .option('-n, --namespaces <namespaces>', 'pod namespaces ("" for host processes)', collect)
    .option('--processes <regexes>', 'binary regexes', collect)
    .option('--pods <regexes>', 'pod name regexes', collect)
    // tetra's older singular spellings, which it still accepts.
    .addOption(new Option('--namespace <namespaces>').argParser(collect).hideHelp())
    .addOption(new Option('--process <regexes>').argParser(collect).hideHelp())
    .addOption(new Option('--pod <regexes>').argParser(collect).hideHelp())
    .option('--pid <pids>', 'process ids', collect)
    .option('--timeout <duration>', 'stop after this long (e.g. 2s); default: until interrupted')
    .action(async (options: EventsOptions) => {
      const filter: EventFilter = {};
      if (options.eventTypes) filter.event_set = options.eventTypes.map((t) => t.toUpperCase() as EventTypeName);
      const both = (a?: string[], b?: string[]) => (a || b ? [...(a ?? []), ...(b ?? [])] : undefined);
      const namespaces = both(options.namespaces, options.namespace);
      const processes = both(options.processes, options.process);
      const pods = both(options.pods, options.pod);
      if (namespaces) filter.namespace = namespaces;
      if (processes) filter.binary_regex = processes;
      if (pods) filter.pod_regex = pods;
      if (options.pid) {
        filter.pid = options.pid.map((text) => {
          const pid = Number(text);
          if (!Number.isInteger(pid) || pid < 0 || pid > 0xffffffff) throw new Error(`--pid "${text}": want a process id`);
          return pid;
        });
      }
      const client = connectTetragon(options.serverAddress);
      const stream = client.getEvents({ allow_list: [filter] });
      const timer = options.timeout ? setTimeout(() => stream.cancel(), parseDuration(options.timeout)) : undefined;
      const onSignal = () => stream.cancel();
      process.once('SIGINT', onSignal);
      try {
        for await (const event of stream) process.stdout.write(`${options.output === 'json' ? JSON.stringify(event) : compactLine(event)}\n`);
      } finally {
        clearTimeout(timer);
        process.off('SIGINT', onSignal);
        client.close();
      }
    });
  const policy = runtime.command('policy').alias('tracingpolicy').description('TracingPolicies of the runtime sensor (tetra tracingpolicy)');
  policy
    .command('add <file>')
    .description('load a TracingPolicy or TracingPolicyNamespaced YAML file; refused whole, every problem named by field')
    .addOption(serverOption())
    .addOption(new Option('--mode <mode>', "load it in this mode, over its spec.options' policy-mode (as tetra's)").choices(POLICY_MODES))
    .action(async (file: string, options: { serverAddress: string; mode?: PolicyMode }) => {
      const yaml = options.mode ? withPolicyMode(readYamlRequest(file), options.mode) : readYamlRequest(file);
      const client = connectTetragon(options.serverAddress);
      try {
        await client.addTracingPolicy(yaml);
        process.stdout.write(`${file}: loaded\n`);
      } catch (error) {
        throw new Error(`${file}: ${(error as { details?: string }).details ?? (error as Error).message}`);
      } finally {
        client.close();
      }
    });
  policy
    .command('delete <name>')
    .description('unload a policy by name: its hooks are detached and its selectors removed from the kernel')
    .addOption(serverOption())
    .action(async (name: string, options: { serverAddress: string }) => {
      const client = connectTetragon(options.serverAddress);
      try {
        await client.deleteTracingPolicy(name);
      } catch (error) {
        throw new Error((error as { details?: string }).details ?? (error as Error).message);
      } finally {
        client.close();
      }
    });
  const configure = async (name: string, change: { enable?: boolean; mode?: PolicyMode }, serverAddress: string) => {
    const client = connectTetragon(serverAddress);
    try {
      await client.configureTracingPolicy(name, change);
    } catch (error) {
      throw new Error((error as { details?: string }).details ?? (error as Error).message);
    } finally {
      client.close();
    }
  };
  policy
    .command('enable <name>')
    .description('load a disabled policy again (tetra tracingpolicy enable)')
    .addOption(serverOption())
    .action((name: string, options: { serverAddress: string }) => configure(name, { enable: true }, options.serverAddress));
  policy
    .command('disable <name>')
    .description('unload a policy but keep it listed, to enable again (tetra tracingpolicy disable)')
    .addOption(serverOption())
    .action((name: string, options: { serverAddress: string }) => configure(name, { enable: false }, options.serverAddress));
  policy
    .command('set-mode <name> <mode>')
    .description('enforce: take its Sigkill, Signal and Override actions; monitor: post their events only (tetra tracingpolicy set-mode)')
    .addOption(serverOption())
    .action((name: string, mode: string, options: { serverAddress: string }) => {
      if (!(POLICY_MODES as readonly string[]).includes(mode)) throw new Error(`mode ${JSON.stringify(mode)}: want ${POLICY_MODES.join(' or ')}`);
      return configure(name, { mode: mode as PolicyMode }, options.serverAddress);
    });
  policy
    .command('list')
    .description('the loaded policies, their hooks and counts')
    .addOption(serverOption())
    .addOption(new Option('-o, --output <format>', 'text or json').choices(['text', 'json']).default('text'))
    .action(async (options: { serverAddress: string; output: string }) => {
      const client = connectTetragon(options.serverAddress);
      try {
        const list = await client.listTracingPolicies();
        if (options.output === 'json') return void process.stdout.write(`${JSON.stringify(list, null, 2)}\n`);
        for (const p of list) process.stdout.write(`[${p.id}] ${p.name}${p.namespace ? ` (${p.namespace})` : ''} sensors: ${(p.sensors ?? []).join(', ')} ${p.info ?? ''} (${p.enabled ? 'enabled' : 'disabled'}, mode ${(p.mode ?? 'TP_MODE_UNKNOWN').replace('TP_MODE_', '').toLowerCase()})\n`);
      } finally {
        client.close();
      }
    });
  runtime
    .command('status')
    .description('the health Tetragon\'s API reports (tetra status)')
    .addOption(serverOption())
    .action(async (options: { serverAddress: string }) => {
      const client = connectTetragon(options.serverAddress);
      try {
        const health = await client.getHealth();
        process.stdout.write(`Health Status: ${health[0]?.details ?? 'unknown'}\n`);
      } finally {
        client.close();
      }
    });
  runtime
    .command('version')
    .description("the version Tetragon's API reports (tetra version)")
    .addOption(serverOption())
    .action(async (options: { serverAddress: string }) => {
      const client = connectTetragon(options.serverAddress);
      try {
        process.stdout.write(`${await client.getVersion()}\n`);
      } finally {
        client.close();
      }
    });
}
