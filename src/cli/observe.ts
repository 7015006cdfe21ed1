/**
 * `ciliate observe`: flows from an agent's Observer API (or any Hubble server), with
 * `hubble observe`'s flags and output formats. Filters that name one side only (`--from-pod`)
 * apply to both; filters for either side (`--pod`, `--ip`, `--label`, `--port`, `--namespace`,
 * `--identity`) make two filters, one per side, ORed — as hubble builds them.
 * @module
 */
import { dirname, join } from 'node:path';
import { type Command, Option } from 'commander';
import {
  connectObserver,
  compactLine,
  readClientTls,
  dictBlock,
  responseJson,
  tableRow,
  timestampFromNs,
  TABLE_HEADER,
  OUTPUT_FORMATS,
  VERDICTS,
  type EventTypeFilter,
  type FlowFilter,
  type FlowOutput,
  type GetFlowsRequest,
  type TcpFlags,
  type Timestamp,
  type Workload,
} from '../observer/index.ts';
import { RESERVED_IDENTITY } from '../identity/index.ts';
import { TracePoint, tracePointName } from '../datapath/index.ts';
import { formatTable } from './output.ts';

export interface ObserveOptions {
  last?: number;
  first?: boolean;
  all?: boolean;
  follow?: boolean;
  since?: string;
  until?: string;
  verdict: string[];
  pod: string[];
  fromPod: string[];
  toPod: string[];
  namespace: string[];
  ip: string[];
  fromIp: string[];
  toIp: string[];
  label: string[];
  fromLabel: string[];
  toLabel: string[];
  identity: string[];
  fromIdentity: string[];
  toIdentity: string[];
  workload: string[];
  fromWorkload: string[];
  toWorkload: string[];
  protocol: string[];
  port: string[];
  fromPort: string[];
  toPort: string[];
  type: string[];
  dropReasonDesc: string[];
  tcpFlags: string[];
  trafficDirection: string[];
  nodeName: string[];
  httpMethod?: string[];
  httpStatus?: string[];
  httpPath?: string[];
  output: FlowOutput;
  printNodeName?: boolean;
  printPolicyNames?: boolean;
  server?: string;
  socket: string;
  tls?: boolean;
  tlsAllowInsecure?: boolean;
  tlsCaCertFiles?: string[];
  tlsClientCertFile?: string;
  tlsClientKeyFile?: string;
  tlsServerName?: string;
}

const EVENT_TYPES: Readonly<Record<string, number>> = { drop: 1, debug: 2, capture: 3, trace: 4, 'policy-verdict': 5, 'trace-sock': 7, l7: 129, agent: 130 };
const TRACE_SUBTYPES: Readonly<Record<string, number>> = Object.fromEntries(Object.values(TracePoint).map((code) => [tracePointName(code), code]));
const TCP_FLAGS = ['FIN', 'SYN', 'RST', 'PSH', 'ACK', 'URG', 'ECE', 'CWR', 'NS'] as const;

const GO_DURATION = /^(\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+$/;
const UNIT_NS: Readonly<Record<string, number>> = { ns: 1, us: 1e3, µs: 1e3, ms: 1e6, s: 1e9, m: 60e9, h: 3600e9 };

/** `--since 5m` (a Go duration before now) or an RFC 3339 time, as a Timestamp. */
export function parseTime(flag: string, text: string, nowMs = Date.now()): Timestamp {
  if (GO_DURATION.test(text)) {
    let ns = 0;
    for (const [, amount, unit] of text.matchAll(/(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/g)) ns += Number(amount) * UNIT_NS[unit];
    return timestampFromNs(BigInt(nowMs) * 1_000_000n - BigInt(Math.round(ns)));
  }
  const ms = Date.parse(text);
  if (Number.isNaN(ms)) throw new Error(`--${flag} ${JSON.stringify(text)}: not a duration (30s, 5m, 1h) nor an RFC 3339 time`);
  return timestampFromNs(BigInt(ms) * 1_000_000n);
}

/** `name`, `Kind/name` or `Kind/`, as hubble reads --workload: an empty part matches any. */
function workloadFilter(text: string): Workload {
  const slash = text.indexOf('/');
  if (slash < 0) return { name: text };
  const kind = text.slice(0, slash);
  const name = text.slice(slash + 1);
  return { ...(kind ? { kind } : {}), ...(name ? { name } : {}) };
}

/** `ns/pod`, or `pod` in namespace default, as hubble reads --pod. */
function podFilter(text: string): string {
  return text.includes('/') ? text : `default/${text}`;
}

function identityOf(text: string): number {
  if (/^\d+$/.test(text)) return Number(text);
  const reserved = (RESERVED_IDENTITY as Record<string, number>)[text];
  if (reserved === undefined) throw new Error(`--identity ${JSON.stringify(text)}: not a number nor a reserved identity (${Object.keys(RESERVED_IDENTITY).join(', ')})`);
  return reserved;
}

function eventType(text: string): EventTypeFilter {
  const [name, sub] = text.split(':', 2);
  const type = EVENT_TYPES[name];
  if (type === undefined) throw new Error(`--type ${JSON.stringify(text)}: expected one of ${Object.keys(EVENT_TYPES).join(', ')}`);
  if (sub === undefined) return { type };
  const subType = name === 'trace' ? TRACE_SUBTYPES[sub] : /^\d+$/.test(sub) ? Number(sub) : undefined;
  if (subType === undefined) throw new Error(`--type ${JSON.stringify(text)}: unknown sub-type (trace: ${Object.keys(TRACE_SUBTYPES).join(', ')})`);
  return { type, matchSubType: true, subType };
}

function tcpFlags(text: string): TcpFlags {
  const flags: TcpFlags = {};
  for (const flag of text.split(',')) {
    const name = flag.trim().toUpperCase();
    if (!(TCP_FLAGS as readonly string[]).includes(name)) throw new Error(`--tcp-flags ${JSON.stringify(text)}: expected flags among ${TCP_FLAGS.join(', ')}`);
    flags[name as keyof TcpFlags] = true;
  }
  return flags;
}

/** The whitelist hubble would send for these flags: one filter, or one per side. */
export function buildWhitelist(o: ObserveOptions): FlowFilter[] {
  const common: FlowFilter = {};
  const add = <K extends keyof FlowFilter>(filter: FlowFilter, key: K, values: NonNullable<FlowFilter[K]>) => {
    if ((values as unknown[]).length === 0) return;
    filter[key] = [...((filter[key] as unknown[] | undefined) ?? []), ...(values as unknown[])] as FlowFilter[K];
  };
  for (const v of o.verdict) if (!VERDICTS.includes(v.toUpperCase() as (typeof VERDICTS)[number])) throw new Error(`--verdict ${JSON.stringify(v)}: expected one of ${VERDICTS.slice(1).join(', ')}`);
  add(common, 'verdict', o.verdict.map((v) => v.toUpperCase()));
  // One row per side-specific filter: hubble's --from-X, --to-X, and --X for either side.
  const sided: [keyof FlowFilter & `source${string}`, keyof FlowFilter & `destination${string}`, unknown[], unknown[], unknown[]][] = [
    ['sourcePod', 'destinationPod', o.fromPod.map(podFilter), o.toPod.map(podFilter), [...o.pod.map(podFilter), ...o.namespace.map((ns) => `${ns}/`)]],
    ['sourceIp', 'destinationIp', o.fromIp, o.toIp, o.ip],
    ['sourceLabel', 'destinationLabel', o.fromLabel, o.toLabel, o.label],
    ['sourceIdentity', 'destinationIdentity', o.fromIdentity.map(identityOf), o.toIdentity.map(identityOf), o.identity.map(identityOf)],
    ['sourcePort', 'destinationPort', o.fromPort, o.toPort, o.port],
    ['sourceWorkload', 'destinationWorkload', o.fromWorkload.map(workloadFilter), o.toWorkload.map(workloadFilter), o.workload.map(workloadFilter)],
  ];
  for (const [from, to, fromValues, toValues] of sided) {
    add(common, from, fromValues as never);
    add(common, to, toValues as never);
  }
  add(common, 'protocol', o.protocol);
  add(common, 'eventType', o.type.map(eventType));
  add(common, 'dropReasonDesc', o.dropReasonDesc.map((r) => r.toUpperCase()));
  add(common, 'tcpFlags', o.tcpFlags.map(tcpFlags));
  add(common, 'trafficDirection', o.trafficDirection.map((d) => d.toUpperCase()));
  add(common, 'nodeName', o.nodeName);
  add(common, 'httpMethod', o.httpMethod ?? []);
  add(common, 'httpStatusCode', o.httpStatus ?? []);
  add(common, 'httpPath', o.httpPath ?? []);
  if (sided.every(([, , , , either]) => either.length === 0)) return Object.keys(common).length > 0 ? [common] : [];
  const left: FlowFilter = structuredClone(common);
  const right: FlowFilter = structuredClone(common);
  for (const [from, to, , , either] of sided) {
    add(left, from, either as never);
    add(right, to, either as never);
  }
  return [left, right];
}

export function buildRequest(o: ObserveOptions): GetFlowsRequest {
  if (o.first && o.follow) throw new Error('--first and --follow cannot be combined');
  const request: GetFlowsRequest = { follow: o.follow === true, first: o.first === true, whitelist: buildWhitelist(o) };
  if (o.since) request.since = parseTime('since', o.since);
  if (o.until) request.until = parseTime('until', o.until);
  // hubble's default: the last 20, unless a range, --all or --follow says otherwise.
  const ranged = o.all || o.since !== undefined || o.until !== undefined || (o.follow && o.last === undefined);
  request.number = o.last ?? (ranged ? 0 : 20);
  return request;
}

const many = (value: string, previous: string[] = []) => [...previous, ...value.split(',').filter(Boolean)];
const repeat = (value: string, previous: string[] = []) => [...previous, value];

export function registerObserveCommand(program: Command): void {
  program
    .command('observe')
    .description("flows from the agent's Observer API, as hubble observe shows them")
    .option('--last <n>', 'the last N flows (default 20)', (v) => Number.parseInt(v, 10))
    .option('--first', 'the first flows of the buffer instead of the last')
    .option('--all', 'every flow of the buffer')
    .option('-f, --follow', 'keep printing new flows until Ctrl-C')
    .option('--since <time>', 'flows since this long ago (30s, 5m, 1h) or an RFC 3339 time')
    .option('--until <time>', 'flows until this long ago or an RFC 3339 time')
    .option('--verdict <verdict>', 'FORWARDED, DROPPED, … (repeatable)', repeat, [])
    .option('--pod <[ns/]pod>', 'flows from or to this pod (name prefix; namespace default unless given)', repeat, [])
    .option('--from-pod <[ns/]pod>', 'flows from this pod', repeat, [])
    .option('--to-pod <[ns/]pod>', 'flows to this pod', repeat, [])
    .option('-n, --namespace <ns>', 'flows from or to pods of this namespace', repeat, [])
    .option('--ip <ip|cidr>', 'flows from or to this address', repeat, [])
    .option('--from-ip <ip|cidr>', 'flows from this address', repeat, [])
    .option('--to-ip <ip|cidr>', 'flows to this address', repeat, [])
    .option('-l, --label <selector>', 'flows from or to endpoints matching this label selector', repeat, [])
    .option('--from-label <selector>', 'flows from endpoints matching this selector', repeat, [])
    .option('--to-label <selector>', 'flows to endpoints matching this selector', repeat, [])
    .option('--identity <id>', 'flows from or to this identity (number or reserved name)', repeat, [])
    .option('--from-identity <id>', 'flows from this identity', repeat, [])
    .option('--to-identity <id>', 'flows to this identity', repeat, [])
    .option('--workload <[kind/]name>', 'flows from or to pods of this workload (Deployment/web, web, or Deployment/ for any)', repeat, [])
    .option('--from-workload <[kind/]name>', 'flows from pods of this workload', repeat, [])
    .option('--to-workload <[kind/]name>', 'flows to pods of this workload', repeat, [])
    .option('--protocol <proto>', 'tcp, udp, icmp, …', repeat, [])
    .option('--port <port>', 'flows from or to this port', repeat, [])
    .option('--from-port <port>', 'flows from this port', repeat, [])
    .option('--to-port <port>', 'flows to this port', repeat, [])
    .option('-t, --type <type>', 'drop, trace[:to-endpoint…], policy-verdict, …', repeat, [])
    .option('--drop-reason-desc <reason>', 'drop reason, e.g. POLICY_DENIED', repeat, [])
    .option('--tcp-flags <flags>', 'TCP flags all set, e.g. SYN,ACK (repeatable: any of them)', repeat, [])
    .option('--traffic-direction <dir>', 'ingress or egress', repeat, [])
    .option('--http-method <method>', 'HTTP flows of this method (GET, POST, …)', repeat, [])
    .option('--http-status <code>', 'HTTP responses with this status code (403) or class (4+)', repeat, [])
    .option('--http-path <regex>', 'HTTP flows whose path matches this regular expression', repeat, [])
    .option('--node-name <pattern>', 'node name (wildcards *)', many, [])
    .addOption(new Option('-o, --output <format>', 'output format').choices(OUTPUT_FORMATS).default('compact'))
    .option('--print-node-name', 'print the node name in compact and dict output')
    .option('--print-policy-names', 'print the names of the policies that decided')
    .option('--server <address>', 'an Observer API at host:port or unix:/path (default: the agent beside --socket)')
    .option('--tls', "TLS towards --server (hubble's --tls); verified against the system's roots unless --tls-ca-cert-files")
    .option('--tls-allow-insecure', "TLS without verifying the server's certificate: encrypted, but to whoever answers")
    .option('--tls-ca-cert-files <files>', 'CA certificates (PEM) to verify a TLS --server with; turns TLS on', many)
    .option('--tls-client-cert-file <file>', 'client certificate (PEM) for a server that asks for one')
    .option('--tls-client-key-file <file>', 'client key (PEM)')
    .option('--tls-server-name <name>', "the name to expect in the server's certificate")
    .addOption(new Option('--socket <path>', 'agent API socket; its Observer socket is hubble.sock beside it').env('CILIATE_SOCKET_PATH').default('/var/run/ciliate/ciliate.sock'))
    .action(async (options: ObserveOptions) => {
      const request = buildRequest(options);
      const tls = readClientTls(
        { caFiles: options.tlsCaCertFiles ?? [], certFile: options.tlsClientCertFile, keyFile: options.tlsClientKeyFile },
        { cert: 'tls-client-cert-file', key: 'tls-client-key-file', cas: 'tls-ca-cert-files' },
      );
      const client = connectObserver(options.server ?? `unix:${join(dirname(options.socket), 'hubble.sock')}`, {
        // Any TLS flag means TLS: a client certificate sent in plaintext would be no use (and a leak).
        tls: options.tls === true || options.tlsAllowInsecure === true || tls.cert !== undefined,
        tlsCa: tls.ca,
        tlsCert: tls.cert,
        tlsKey: tls.key,
        tlsServerName: options.tlsServerName,
        tlsAllowInsecure: options.tlsAllowInsecure,
      });
      const stream = client.getFlows(request);
      const onInterrupt = () => stream.cancel();
      process.once('SIGINT', onInterrupt);
      const print = { nodeName: options.printNodeName, policyNames: options.printPolicyNames };
      const rows: string[][] = [];
      try {
        for await (const response of stream) {
          if (options.output === 'json' || options.output === 'jsonpb') {
            process.stdout.write(`${responseJson(response, options.output)}\n`);
          } else if (response.lostEvents) {
            process.stderr.write(`EVENTS LOST: ${response.lostEvents.source} CPU(${response.lostEvents.cpu?.value ?? 0}) ${response.lostEvents.numEventsLost}\n`);
          } else if (response.flow) {
            if (options.output === 'compact') process.stdout.write(`${compactLine(response.flow, print)}\n`);
            else if (options.output === 'dict') process.stdout.write(`${dictBlock(response.flow, print)}\n`);
            else if (options.follow) process.stdout.write(`${tableRow(response.flow).join('\t')}\n`);
            else rows.push(tableRow(response.flow));
          }
        }
        if (options.output === 'table' && !options.follow) process.stdout.write(`${formatTable(TABLE_HEADER, rows)}\n`);
      } catch (error) {
        const details = (error as { details?: string }).details;
        throw new Error(`observe: ${details ?? (error as Error).message}`);
      } finally {
        process.removeListener('SIGINT', onInterrupt);
        client.close();
      }
    });
}
