/**
 * `ciliate agent` and the commands that ask a running agent: status, endpoint, node, bpf … list.
 * @module
 */
import { type Command, Option } from 'commander';
import { z } from 'zod';
import {
  AgentClient,
  AgentConfigSchema,
  envName,
  innerSchema,
  loadConfig,
  RUNTIME_ONLY_MODULES,
  runAgent,
  type AgentConfig,
  type Endpoint,
  type EndpointView,
  type NodeDeregistration,
  type NodeRecord,
  type ReconcilerModuleHealth,
} from '../agent/index.ts';
import { parseNamedPort, type NamedPortText } from '../loadbalancer/index.ts';
import { formatTable, outputOption, type OutputFormat } from './output.ts';

/**
 * One flag per setting of a configuration (by default the agent's: the shared ones and every
 * module's), with the setting's own description and default: a module's new setting needs no code here.
 */
/** A container as `endpoint containers` takes it: `id=ID[,name=NAME][,image=IMAGE]` (the agent checks the values). */
function parseContainer(text: string): { id: string; name?: string; image?: string } {
  const fields: Record<string, string> = {};
  for (const pair of text.split(',')) {
    const eq = pair.indexOf('=');
    const key = pair.slice(0, eq);
    if (eq <= 0 || !['id', 'name', 'image'].includes(key) || key in fields) throw new Error(`container "${text}": want id=ID[,name=NAME][,image=IMAGE], each once`);
    fields[key] = pair.slice(eq + 1);
  }
  if (!fields.id) throw new Error(`container "${text}": want id=ID[,name=NAME][,image=IMAGE], each once`);
  return fields as { id: string; name?: string; image?: string };
}

export function configOptions(shape: z.ZodRawShape = AgentConfigSchema.shape): Option[] {
  const options: Option[] = [];
  for (const [key, field] of Object.entries(shape) as [string, z.ZodType][]) {
    const flag = key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
    const inner = innerSchema(field);
    const fallback = field instanceof z.ZodDefault ? (field.def.defaultValue as unknown) : undefined;
    const help = `${field.description ?? key} (${envName(key)}${fallback === undefined || fallback === '' ? '' : `; default ${Array.isArray(fallback) ? fallback.join(',') || 'none' : String(fallback)}`})`;
    if (inner instanceof z.ZodBoolean) {
      // Both forms, so that leaving them out keeps the file's or environment's setting.
      options.push(new Option(`--${flag}`, help), new Option(`--no-${flag}`, `turn ${flag} off`));
    } else if (inner instanceof z.ZodNumber) {
      options.push(new Option(`--${flag} <number>`, help).argParser(Number));
    } else if (inner instanceof z.ZodArray) {
      options.push(new Option(`--${flag} <list>`, help).argParser((v: string) => v.split(',').filter(Boolean)));
    } else {
      options.push(new Option(`--${flag} <value>`, help));
    }
  }
  return options;
}

function socketOption(): Option {
  return new Option('--socket <path>', 'agent API socket').env('CILIATE_SOCKET_PATH').default('/var/run/ciliate/ciliate.sock');
}

/** `key=value` arguments as a record; `what` names them in the error (label, config). */
function parsePairs(pairs: readonly string[], what = 'label', form = 'key=value'): Record<string, string> {
  const record: Record<string, string> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new Error(`${what} "${pair}": want ${form}`);
    record[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return record;
}

function print(format: OutputFormat, value: unknown, table: () => string): void {
  process.stdout.write(`${format === 'json' ? JSON.stringify(value, null, 2) : table()}\n`);
}

/** Threads of the agent's libuv pool, unless UV_THREADPOOL_SIZE says otherwise. */
const AGENT_THREADPOOL_SIZE = 16;

export function registerAgentCommands(program: Command): void {
  const agent = program
    .command('agent')
    .description('run the node agent (flags override CILIATE_* environment variables, which override --config)')
    .option('--config <file>', 'YAML configuration file')
    .option('--runtime-only', "only the runtime sensor and Tetragon's API (and the local API), on a plain host: no store, no datapath");
  for (const option of configOptions()) agent.addOption(option);
  agent.action(async (options: Partial<AgentConfig> & { config?: string; runtimeOnly?: boolean }) => {
    // libuv's thread pool (4 threads by default, sized when first used, which is later than
    // this) carries the agent's netlink transactions and the bpf(2) calls that wait out RCU grace
    // periods. A TCX attach waits out its grace period holding RTNL, so while an endpoint is added
    // the pool's threads queue on that lock; with only four, an add's policy map install (which
    // needs no lock) would queue behind them.
    process.env.UV_THREADPOOL_SIZE ??= String(AGENT_THREADPOOL_SIZE);
    const { config: file, runtimeOnly, ...flags } = options;
    if (runtimeOnly) {
      await runAgent(loadConfig({ file, env: process.env, flags: { ...flags, runtimeEnabled: true } }), RUNTIME_ONLY_MODULES);
      return;
    }
    await runAgent(loadConfig({ file, env: process.env, flags }));
  });

  program
    .command('status')
    .description('the agent\'s health, IPAM and datapath state')
    .addOption(socketOption())
    .addOption(outputOption())
    .action(async (options: { socket: string; output: OutputFormat }) => {
      const status = await new AgentClient(options.socket).get<Record<string, unknown>>('/v1/status');
      print(options.output, status, () => formatStatus(status));
    });

  const endpoint = program.command('endpoint').description('endpoints (pod interfaces) on this node');
  endpoint
    .command('list')
    .addOption(socketOption())
    .addOption(outputOption())
    .action(async (options: { socket: string; output: OutputFormat }) => {
      const endpoints = await new AgentClient(options.socket).get<EndpointView[]>('/v1/endpoints');
      print(options.output, endpoints, () =>
        formatTable(
          ['ID', 'IDENTITY', 'POLICY REVISION', 'IPV4', 'INTERFACE', 'CONTAINER', 'POD', 'WORKLOAD'],
          endpoints.map((ep) => [
            String(ep.id),
            String(ep.identity),
            ep.policyRevision === undefined ? '-' : String(ep.policyRevision),
            ep.ipv4,
            ep.hostIfname,
            ep.containerId.slice(0, 12),
            ep.podName ? `${ep.namespace ?? 'default'}/${ep.podName}` : '',
            ep.workload ? `${ep.workload.kind}/${ep.workload.name}` : '',
          ]),
        ),
      );
    });
  endpoint
    .command('add')
    .description('add an endpoint: a veth into an existing network namespace, an address, an identity from its labels (what CNI ADD does)')
    .requiredOption('--container-id <id>', 'the container the interface belongs to')
    .requiredOption('--netns <path>', 'the network namespace, e.g. /run/netns/pod1')
    .option('--ifname <name>', 'the interface inside the namespace', 'eth0')
    .option('--labels <key=value,...>', 'the pod\'s labels (its identity)', '')
    .option('--namespace <namespace>', 'the pod\'s namespace')
    .option('--pod-name <name>', 'the pod\'s name')
    .option('--port <name=PORT[/PROTOCOL]>', 'a named port of the pod, what a service\'s named targetPort resolves to (repeatable)', (value: string, previous: NamedPortText[] = []) => {
      const port = parseNamedPort(value);
      if (!port) throw new Error(`--port "${value}": want name=PORT[/PROTOCOL], e.g. http=8080/TCP`);
      return [...previous, port];
    })
    .addOption(socketOption())
    .addOption(outputOption())
    .action(async (options: { containerId: string; netns: string; ifname: string; labels: string; namespace?: string; podName?: string; port?: NamedPortText[]; socket: string; output: OutputFormat }) => {
      const ep = await new AgentClient(options.socket).call<Endpoint>('POST', '/v1/endpoints', {
        containerId: options.containerId,
        ifname: options.ifname,
        netns: options.netns,
        labels: parsePairs(options.labels.split(',').filter(Boolean)),
        ...(options.namespace ? { namespace: options.namespace } : {}),
        ...(options.podName ? { podName: options.podName } : {}),
        ...(options.port ? { ports: options.port } : {}),
      });
      print(options.output, ep, () => `endpoint ${ep.id}: ${ep.ipv4} identity ${ep.identity}`);
    });
  endpoint
    .command('get <id>')
    .description('one endpoint, by id or container id')
    .addOption(socketOption())
    .addOption(outputOption())
    .action(async (id: string, options: { socket: string; output: OutputFormat }) => {
      const ep = await new AgentClient(options.socket).get<EndpointView & { datapath?: unknown }>(`/v1/endpoints/${encodeURIComponent(id)}`);
      print(options.output, ep, () => formatTable(['FIELD', 'VALUE'], Object.entries(ep).map(([k, v]) => [k, typeof v === 'object' ? JSON.stringify(v) : String(v)])));
    });

  const identity = program.command('identity').description('security identities');
  identity
    .command('list')
    .addOption(socketOption())
    .addOption(outputOption())
    .action(async (options: { socket: string; output: OutputFormat }) => {
      const identities = await new AgentClient(options.socket).get<IdentityView[]>('/v1/identities');
      print(options.output, identities, () => formatTable(['ID', 'NAME', 'LABELS'], identities.map((i) => [String(i.id), i.name, i.labels.join(' ')])));
    });
  identity
    .command('get <id>')
    .addOption(socketOption())
    .addOption(outputOption())
    .action(async (id: string, options: { socket: string; output: OutputFormat }) => {
      const found = await new AgentClient(options.socket).get<IdentityView>(`/v1/identities/${encodeURIComponent(id)}`);
      print(options.output, found, () => formatTable(['ID', 'NAME', 'LABELS'], [[String(found.id), found.name, found.labels.join(' ')]]));
    });

  endpoint
    .command('labels <id> <labels...>')
    .description('replace an endpoint\'s labels (key=value ...): its identity and policy follow')
    .addOption(socketOption())
    .addOption(outputOption())
    .action(async (id: string, pairs: string[], options: { socket: string; output: OutputFormat }) => {
      const ep = await new AgentClient(options.socket).call<Endpoint>('PUT', `/v1/endpoints/${encodeURIComponent(id)}/labels`, parsePairs(pairs));
      print(options.output, ep, () => `endpoint ${ep.id}: identity ${ep.identity}`);
    });

  endpoint
    .command('containers <id> [containers...]')
    .description("replace the pod's containers (what a TracingPolicy's containerSelector selects), each id=ID[,name=NAME][,image=IMAGE]; none: the pod has none")
    .option('--unknown', 'forget them: the containers are unknown (a containerSelector selects none)')
    .addOption(socketOption())
    .addOption(outputOption())
    .action(async (id: string, items: string[], options: { unknown?: boolean; socket: string; output: OutputFormat }) => {
      if (options.unknown && items.length > 0) throw new Error('--unknown takes no containers');
      const containers = options.unknown ? null : items.map(parseContainer);
      const ep = await new AgentClient(options.socket).call<Endpoint>('PUT', `/v1/endpoints/${encodeURIComponent(id)}/containers`, { containers });
      print(options.output, ep, () => `endpoint ${ep.id}: ${ep.containers ? `${ep.containers.length} containers` : 'containers unknown'}`);
    });

  const namespace = program
    .command('namespace')
    .description('namespace labels, which pods inherit (as io.cilium.k8s.namespace.labels.<key>) for namespaceSelector matching');
  namespace
    .command('list')
    .description('namespaces with labels (every namespace also has kubernetes.io/metadata.name=<name>)')
    .addOption(socketOption())
    .addOption(outputOption())
    .action(async (options: { socket: string; output: OutputFormat }) => {
      const namespaces = await new AgentClient(options.socket).get<{ name: string; labels: Record<string, string> }[]>('/v1/namespaces');
      print(options.output, namespaces, () =>
        formatTable(['NAMESPACE', 'LABELS'], namespaces.map((ns) => [ns.name, Object.entries(ns.labels).map(([k, v]) => `${k}=${v}`).join(' ')])),
      );
    });
  namespace
    .command('label <name> [labels...]')
    .description('replace a namespace\'s labels (key=value ...; none clears them), cluster-wide: the identities of its pods follow')
    .addOption(socketOption())
    .addOption(outputOption())
    .action(async (name: string, pairs: string[], options: { socket: string; output: OutputFormat }) => {
      const ns = await new AgentClient(options.socket).call<{ name: string; labels: Record<string, string> }>(
        'PUT',
        `/v1/namespaces/${encodeURIComponent(name)}/labels`,
        parsePairs(pairs),
      );
      print(options.output, ns, () => `namespace ${ns.name}: ${Object.keys(ns.labels).length} labels`);
    });

  program
    .command('config')
    .description("the running agent's options that change without a restart, as cilium-dbg config: list them, or set Option=value (MonitorAggregationLevel=none|lowest|low|medium|maximum)")
    .argument('[settings...]', 'Option=value pairs; none: list the options')
    .addOption(socketOption())
    .addOption(outputOption())
    .action(async (settings: string[], options: { socket: string; output: OutputFormat }) => {
      const client = new AgentClient(options.socket);
      const current =
        settings.length === 0
          ? await client.get<Record<string, string>>('/v1/config')
          : await client.call<Record<string, string>>('PATCH', '/v1/config', { options: parsePairs(settings, 'config', 'Option=value') });
      print(options.output, current, () => formatTable(['OPTION', 'VALUE'], Object.entries(current)));
    });

  program
    .command('monitor')
    .description('datapath events as they happen: traces, drops and policy verdicts naming the rule that decided')
    .option('-n, --last <n>', 'recent events to show first', (v) => Number.parseInt(v, 10), 20)
    .option('-f, --follow', 'keep printing new events')
    .option('-t, --type <type...>', 'trace, drop or policy-verdict')
    .addOption(socketOption())
    .addOption(outputOption())
    .action(async (options: { last: number; follow?: boolean; type?: string[]; socket: string; output: OutputFormat }) => {
      const query = new URLSearchParams({ last: String(options.last) });
      for (const type of options.type ?? []) query.append('type', type);
      const show = (event: { time: string; summary: string }) =>
        process.stdout.write(`${options.output === 'json' ? JSON.stringify(event) : `${event.time}: ${event.summary}`}\n`);
      const client = new AgentClient(options.socket);
      if (!options.follow) {
        for (const event of await client.get<{ time: string; summary: string }[]>(`/v1/monitor?${query}`)) show(event);
        return;
      }
      query.set('follow', 'true');
      const abort = new AbortController();
      process.once('SIGINT', () => abort.abort());
      await client.stream(`/v1/monitor?${query}`, show, abort.signal);
    });

  const node = program.command('node').description('nodes of the cluster');
  node
    .command('list')
    .addOption(socketOption())
    .addOption(outputOption())
    .action(async (options: { socket: string; output: OutputFormat }) => {
      const nodes = await new AgentClient(options.socket).get<NodeRecord[]>('/v1/nodes');
      print(options.output, nodes, () => formatTable(['NAME', 'NODE IP', 'POD CIDR', 'ROUTER', 'ROUTING', 'VERSION'], nodes.map((n) => [n.name, n.nodeIp || '-', n.podCidr, n.routerIp, n.routingMode, n.agentVersion])));
    });
  node
    .command('delete <name>')
    .description(
      'deregister a node that is gone for good: its record, policy status, endpoints, pod CIDR and addresses and identity references, ' +
        'in one transaction (stop its agent first: a running agent notices only when it restarts)',
    )
    .addOption(socketOption())
    .addOption(outputOption())
    .action(async (name: string, options: { socket: string; output: OutputFormat }) => {
      const result = await new AgentClient(options.socket).call<NodeDeregistration>('DELETE', `/v1/nodes/${encodeURIComponent(name)}`);
      print(options.output, result, () => `node ${result.node} deleted at revision ${result.revision}: ${result.deleted.length} keys${result.podCidr ? `, pod CIDR ${result.podCidr} freed` : ''}`);
    });

  program
    .command('store')
    .description('the embedded state store')
    .command('acknowledge')
    .description(
      'acknowledge that the state store lost a journal tail (see ciliate status), after checking the node\'s endpoints against the kernel; ' +
        'the agent stops reporting itself degraded for it',
    )
    .addOption(socketOption())
    .addOption(outputOption())
    .action(async (options: { socket: string; output: OutputFormat }) => {
      const result = await new AgentClient(options.socket).call<{ acknowledged: unknown[]; revision: number }>('POST', '/v1/store/recoveries/acknowledge');
      print(options.output, result, () => `${result.acknowledged.length} store recoveries acknowledged`);
    });
}

/** `ciliate bpf endpoint|ipcache|ct|metrics list`, added to the existing `bpf` command. */
export function registerBpfMapCommands(bpf: Command): void {
  for (const name of ['endpoint', 'ipcache', 'ct', 'metrics'] as const) {
    bpf
      .command(name)
      .description(`the datapath's ${name} map`)
      .command('list')
      .addOption(socketOption())
      .addOption(outputOption())
      .action(async (options: { socket: string; output: OutputFormat }) => {
        const entries = await new AgentClient(options.socket).get<{ key: Record<string, unknown>; value: Record<string, unknown> }[]>(`/v1/bpf/${name}`);
        print(options.output, entries, () => {
          if (entries.length === 0) return '(empty)';
          const keys = Object.keys(entries[0].key);
          const values = Object.keys(entries[0].value);
          // A value field named like a key field (flags) is shown as value.flags.
          const header = [...keys, ...values.map((k) => (keys.includes(k) ? `value.${k}` : k))].map((k) => k.toUpperCase());
          return formatTable(header, entries.map((e) => [...keys.map((k) => String(e.key[k])), ...values.map((k) => String(e.value[k]))]));
        });
      });
  }
}

interface IdentityView {
  id: number;
  name: string;
  labels: string[];
}

function formatStatus(status: Record<string, unknown>): string {
  const { reconcilers, reasons, ...rest } = status as Record<string, unknown> & { reconcilers?: ReconcilerModuleHealth[]; reasons?: string[] };
  const lines = Object.entries(rest).map(
    ([key, value]) => `${`${key}:`.padEnd(16)}${typeof value === 'object' && value !== null ? JSON.stringify(value) : String(value)}`,
  );
  for (const reason of reasons ?? []) lines.push(`${'degraded:'.padEnd(16)}${reason}`);
  if (reconcilers && reconcilers.length > 0) {
    lines.push('', 'reconcilers:');
    lines.push(
      formatTable(
        ['MODULE', 'RECONCILER', 'STATE', 'DESIRED', 'PENDING', 'ERRORS', 'REPAIRS', 'PRUNES', 'LAST REFRESH', 'LAST ERROR'],
        reconcilers.map((r) => [
          r.module,
          r.name,
          r.degraded ? 'degraded' : 'ok',
          String(r.desired),
          String(r.pending),
          String(r.errors),
          String(r.repairs),
          String(r.prunes),
          r.lastRefreshAt ?? '-',
          r.lastError ? `${r.lastErrorAt ?? ''} ${r.lastError}`.trim() : '-',
        ]),
      ),
    );
  }
  return lines.join('\n');
}
