/**
 * `ciliate service add|list|get|delete`: services on a running agent. The agent validates a
 * definition whole and names the field of any problem; the CLI only turns flags into it.
 * @module
 */
import { type Command, Option } from 'commander';
import { AgentClient } from '../agent/index.ts';
import type { ServiceView } from '../agent/modules/services.ts';
import type { LbEntry } from '../loadbalancer/index.ts';
import { formatTable, outputOption, printOutput, readYamlRequest, socketOption, type OutputFormat } from './output.ts';

/** `[name=]PORT[:TARGET[:NODEPORT]][/PROTO]`, e.g. `http=80:8080/TCP`. Numbers stay text when they are not, for the agent to name. */
export function parsePortSpec(spec: string): Record<string, unknown> {
  const match = /^(?:([^=]+)=)?([^:/]+)(?::([^:/]+))?(?::([^:/]+))?(?:\/(.+))?$/.exec(spec);
  if (!match) throw new Error(`--port "${spec}": want [name=]PORT[:TARGET[:NODEPORT]][/PROTOCOL], e.g. http=80:8080/TCP`);
  const [, name, port, target, nodePort, protocol] = match;
  const number = (text: string) => (/^\d+$/.test(text) ? Number(text) : text);
  return {
    ...(name ? { name } : {}),
    port: number(port),
    ...(target ? { targetPort: number(target) } : {}),
    ...(nodePort ? { nodePort: number(nodePort) } : {}),
    ...(protocol ? { protocol: protocol.toUpperCase() } : {}),
  };
}

/** `k=v,k2=v2` as labels. */
function parseSelector(text: string, option = '--selector'): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const pair of text.split(',').filter(Boolean)) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new Error(`${option} "${pair}": want key=value[,key=value…]`);
    labels[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return labels;
}

/** `namespace/name`, or `name` in --namespace. */
function servicePath(ref: string, namespace: string): string {
  const [ns, name] = ref.includes('/') ? ref.split('/', 2) : [namespace, ref];
  return `/v1/services/${encodeURIComponent(ns)}/${encodeURIComponent(name)}`;
}

const collect = (value: string, previous: string[] = []) => [...previous, value];

function namespaceOption(): Option {
  return new Option('-n, --namespace <namespace>', 'the service\'s namespace').default('default');
}

function formatServices(services: readonly ServiceView[]): string {
  return formatTable(
    ['SERVICE', 'TYPE', 'CLUSTER-IP', 'PORTS', 'BACKENDS'],
    services.map((s) => [
      `${s.namespace}/${s.name}`,
      s.type,
      s.clusterIP,
      s.ports.map((p) => `${p.name ? `${p.name}=` : ''}${p.port}${p.nodePort ? `:${p.nodePort}` : ''}/${p.protocol}→${p.targetPort}`).join(','),
      String(new Set(s.frontends.flatMap((f) => f.backends.map((b) => b.split(':')[0]))).size),
    ]),
  );
}

function formatService(service: ServiceView): string {
  const lines = [
    `service:     ${service.namespace}/${service.name}`,
    `type:        ${service.type}`,
    `clusterIP:   ${service.clusterIP}`,
    ...(service.selector ? [`selector:    ${Object.entries(service.selector).map(([k, v]) => `${k}=${v}`).join(',')}`] : []),
    ...(service.externalIPs.length ? [`externalIPs: ${service.externalIPs.join(', ')}`] : []),
    ...(service.loadBalancerIPs.length ? [`lbIPs:       ${service.loadBalancerIPs.join(', ')}`] : []),
    ...(service.sessionAffinity ? [`affinity:    ClientIP, ${service.sessionAffinity.timeoutSeconds} s`] : []),
    ...(service.externalTrafficLocal ? ['external traffic: Local'] : []),
    '',
    formatTable(
      ['FRONTEND', 'KIND', 'BACKENDS'],
      service.frontends.map((f) => [
        f.address,
        f.kind,
        [f.backends.join(', ') || '(none: connections are refused)', ...(f.terminating ?? []).map((b) => `${b} (terminating)`)].join(', '),
      ]),
    ),
  ];
  return lines.join('\n');
}

export function registerServiceCommands(program: Command): void {
  const service = program.command('service').description('services: ClusterIP, NodePort and LoadBalancer, balanced over pods on every node');

  service
    .command('add <name>')
    .description('create a service; its ClusterIP (and node ports) are allocated unless given')
    .addOption(namespaceOption())
    .addOption(new Option('--type <type>', 'ClusterIP, NodePort or LoadBalancer').default('ClusterIP'))
    .requiredOption('--port <spec>', 'a port: [name=]PORT[:TARGET[:NODEPORT]][/PROTOCOL], e.g. http=80:8080/TCP (repeat for several)', collect)
    .option('--selector <labels>', 'backends are the pods of the namespace with these labels: app=web,tier=front')
    .option('--labels <labels>', "the service's own labels (policies select services by them): tier=front,team=a")
    .option('--backend <ip>', 'a backend address, for a service without selector (repeat for several)', collect)
    .option('--cluster-ip <ip>', 'this ClusterIP instead of an allocated one')
    .option('--external-ip <ip>', 'an external IP the service also answers on (repeat for several)', collect)
    .option('--load-balancer-ip <ip>', 'a LoadBalancer IP (type LoadBalancer; repeat for several)', collect)
    .option('--session-affinity <affinity>', 'None, or ClientIP: a client keeps its backend')
    .option('--external-traffic-policy <policy>', 'Cluster (default), or Local: clients from outside get the backends of the node they reached')
    .option('--session-affinity-timeout <seconds>', 'how long a ClientIP affinity lasts without connections (default 10800)', (v) => (/^\d+$/.test(v) ? Number(v) : v))
    .addOption(socketOption())
    .addOption(outputOption())
    .action(
      async (
        name: string,
        options: {
          namespace: string;
          type: string;
          port: string[];
          selector?: string;
          labels?: string;
          backend?: string[];
          clusterIp?: string;
          externalIp?: string[];
          loadBalancerIp?: string[];
          sessionAffinity?: string;
          sessionAffinityTimeout?: number | string;
          externalTrafficPolicy?: string;
          socket: string;
          output: OutputFormat;
        },
      ) => {
        const body = {
          name,
          namespace: options.namespace,
          type: options.type,
          ports: options.port.map(parsePortSpec),
          ...(options.selector !== undefined ? { selector: parseSelector(options.selector) } : {}),
          ...(options.labels !== undefined ? { labels: parseSelector(options.labels, '--labels') } : {}),
          ...(options.backend ? { backends: options.backend.map((ip) => ({ ip })) } : {}),
          ...(options.clusterIp ? { clusterIP: options.clusterIp } : {}),
          ...(options.externalIp ? { externalIPs: options.externalIp } : {}),
          ...(options.loadBalancerIp ? { loadBalancerIPs: options.loadBalancerIp } : {}),
          ...(options.sessionAffinity ? { sessionAffinity: options.sessionAffinity } : {}),
          ...(options.sessionAffinityTimeout !== undefined ? { sessionAffinityConfig: { clientIP: { timeoutSeconds: options.sessionAffinityTimeout } } } : {}),
          ...(options.externalTrafficPolicy ? { externalTrafficPolicy: options.externalTrafficPolicy } : {}),
        };
        const created = await new AgentClient(options.socket).call<ServiceView & { revision: number }>('POST', '/v1/services', body);
        printOutput(options.output, created, () => `${formatService(created)}\nrevision: ${created.revision}`);
      },
    );

  service
    .command('import <files...>')
    .description('create the Services of Kubernetes manifests (apiVersion v1, kind Service); a file with any problem creates nothing')
    .addOption(socketOption())
    .addOption(outputOption())
    .action(async (files: string[], options: { socket: string; output: OutputFormat }) => {
      const client = new AgentClient(options.socket);
      const results: { file: string; services: { service: string; clusterIP: string }[]; revision: number }[] = [];
      for (const file of files) {
        const yaml = readYamlRequest(file);
        results.push({ file, ...(await client.call<{ services: { service: string; clusterIP: string }[]; revision: number }>('POST', '/v1/services/import', { yaml, file })) });
      }
      printOutput(options.output, results, () => results.map((r) => `${r.file}: created ${r.services.map((s) => `${s.service} (${s.clusterIP})`).join(', ')}\nrevision: ${r.revision}`).join('\n'));
    });

  service
    .command('list')
    .description('every service, with its backends as this node sees them')
    .addOption(socketOption())
    .addOption(outputOption())
    .action(async (options: { socket: string; output: OutputFormat }) => {
      const services = await new AgentClient(options.socket).get<ServiceView[]>('/v1/services');
      printOutput(options.output, services, () => (services.length === 0 ? '(no services)' : formatServices(services)));
    });

  service
    .command('get <service>')
    .description('one service (namespace/name, or name with --namespace): its frontends and backends')
    .addOption(namespaceOption())
    .addOption(socketOption())
    .addOption(outputOption())
    .action(async (ref: string, options: { namespace: string; socket: string; output: OutputFormat }) => {
      const view = await new AgentClient(options.socket).get<ServiceView>(servicePath(ref, options.namespace));
      printOutput(options.output, view, () => formatService(view));
    });

  const backend = service.command('backend').description('the explicit backends of a service without selector: drain (terminating), activate, remove');
  const backendCommand = (verb: string, description: string, method: 'PUT' | 'DELETE', state?: 'terminating' | 'active') =>
    backend
      .command(`${verb} <service> <ip>`)
      .description(description)
      .addOption(namespaceOption())
      .addOption(socketOption())
      .addOption(outputOption())
      .action(async (ref: string, ip: string, options: { namespace: string; socket: string; output: OutputFormat }) => {
        const path = `${servicePath(ref, options.namespace)}/backends/${encodeURIComponent(ip)}`;
        const view = await new AgentClient(options.socket).call<ServiceView & { revision: number }>(method, path, state ? { state } : undefined);
        printOutput(options.output, view, () => `${formatService(view)}\nrevision: ${view.revision}`);
      });
  backendCommand('drain', 'mark a backend terminating: it takes no new connections and keeps its established ones', 'PUT', 'terminating');
  backendCommand('activate', 'make a terminating backend take new connections again', 'PUT', 'active');
  backendCommand('remove', 'remove a backend from the service', 'DELETE');

  service
    .command('delete <service>')
    .description('delete a service (namespace/name, or name with --namespace)')
    .addOption(namespaceOption())
    .addOption(socketOption())
    .action(async (ref: string, options: { namespace: string; socket: string }) => {
      const result = await new AgentClient(options.socket).call<{ deleted: string; revision: number }>('DELETE', servicePath(ref, options.namespace));
      process.stdout.write(`deleted ${result.deleted}\nrevision: ${result.revision}\n`);
    });
}

/** `ciliate bpf lb list`: the load-balancing maps as the kernel holds them. */
export function registerBpfLbCommand(bpf: Command): void {
  bpf
    .command('lb')
    .description('load-balancing maps: service frontends, their backend slots and backends')
    .command('list')
    .addOption(socketOption())
    .addOption(outputOption())
    .action(async (options: { socket: string; output: OutputFormat }) => {
      const entries = await new AgentClient(options.socket).get<LbEntry[]>('/v1/lb/maps');
      printOutput(options.output, entries, () =>
        entries.length === 0
          ? '(empty)'
          : formatTable(
              ['SERVICE ADDRESS', 'REV NAT', 'ALGORITHM', 'BACKEND ADDRESS (SLOT, ID)'],
              entries.flatMap((e) => {
                const backends = [
                  ...(e.backends.length === 0 ? ['(no backends)'] : e.backends.map((b) => `${b.address ?? '(missing)'} (${b.slot}, ${b.id})${b.flags ? ' terminating' : ''}`)),
                  ...(e.terminating ?? []).map((b) => `${b.address ?? '(missing)'} (-, ${b.id}) terminating`),
                ];
                return backends.map((backend, i) => (i === 0 ? [e.frontend, String(e.revNat), e.algorithm, backend] : ['', '', '', backend]));
              }),
            ),
      );
    });
}
