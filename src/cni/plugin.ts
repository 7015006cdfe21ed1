/**
 * The Ciliate CNI plugin (CNI spec 1.0, with STATUS from 1.1): the container runtime runs it with
 * the network configuration on stdin and CNI_* variables; it asks the node's agent to create or
 * remove the endpoint and prints the result (or a CNI error) on stdout.
 * @module
 */
import { existsSync } from 'node:fs';
// By path, not through src/agent/index.ts: that would load the whole agent into every invocation.
import { AgentApiError, AgentClient, DEFAULT_SOCKET } from '../agent/client.ts';
import type { Endpoint } from '../agent/endpoint.ts';
import { CniError, CniErrorCode } from './errors.ts';

export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const;
const NETWORK_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

/** The network configuration (CNI spec 1.0 "Network configuration"); unknown keys pass through. */
export interface NetConf {
  cniVersion: string;
  name: string;
  type: string;
  /** Ciliate: the agent's API socket. */
  socketPath?: string;
  args?: Record<string, unknown>;
  runtimeConfig?: Record<string, unknown>;
  prevResult?: unknown;
  capabilities?: Record<string, boolean>;
  dns?: unknown;
  ipam?: unknown;
  [key: string]: unknown;
}

// Validated by hand rather than with zod: the plugin is a process per pod, and loading zod costs
// each one about 17 MB and 50 ms, for six fields.

/** A field that is not what the spec says: its dotted path and what is wrong with it. */
class FieldError extends Error {
  readonly path: string;
  constructor(path: string, message: string) {
    super(message);
    this.path = path;
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function describe(value: unknown): string {
  return value === null ? 'null' : Array.isArray(value) ? 'array' : typeof value;
}

function expectString(value: unknown, path: string): string {
  if (typeof value !== 'string') throw new FieldError(path, `expected a string, got ${describe(value)}`);
  return value;
}

function expectObject(value: unknown, path: string): Record<string, unknown> {
  if (!isObject(value)) throw new FieldError(path, `expected an object, got ${describe(value)}`);
  return value;
}

function validateNetConf(json: unknown): NetConf {
  const conf = expectObject(json, '');
  expectString(conf.cniVersion, 'cniVersion');
  if (!NETWORK_NAME.test(expectString(conf.name, 'name'))) {
    throw new FieldError('name', 'must start with a letter or digit and contain only letters, digits, _ . -');
  }
  if (expectString(conf.type, 'type') === '') throw new FieldError('type', 'must not be empty');
  if (conf.socketPath !== undefined && !expectString(conf.socketPath, 'socketPath').startsWith('/')) {
    throw new FieldError('socketPath', 'must be an absolute path');
  }
  for (const key of ['args', 'runtimeConfig'] as const) if (conf[key] !== undefined) expectObject(conf[key], key);
  if (conf.capabilities !== undefined) {
    for (const [name, value] of Object.entries(expectObject(conf.capabilities, 'capabilities'))) {
      if (typeof value !== 'boolean') throw new FieldError(`capabilities.${name}`, `expected a boolean, got ${describe(value)}`);
    }
  }
  return conf as NetConf;
}

export interface CniInvocation {
  command: string;
  containerId: string;
  netns: string;
  ifname: string;
  /** CNI_ARGS as a map (K8S_POD_NAME, K8S_POD_NAMESPACE, …). */
  args: Record<string, string>;
}

/** CNI_ARGS key for a container's own labels: `CILIATE_LABELS=app=web,tier=db`. */
export const LABELS_ARG = 'CILIATE_LABELS';

/** The CNI conventions' label list: `[{key, value}, …]`. */
function conventionLabels(value: unknown, path: string): { key: string; value: string }[] {
  if (!Array.isArray(value)) throw new FieldError(path, `expected an array, got ${describe(value)}`);
  return value.map((item: unknown, i) => {
    const label = expectObject(item, `${path}.${i}`);
    if (expectString(label.key, `${path}.${i}.key`) === '') throw new FieldError(`${path}.${i}.key`, 'must not be empty');
    return { key: label.key as string, value: expectString(label.value, `${path}.${i}.value`) };
  });
}

/**
 * The pod's labels, which make its security identity: the network configuration's
 * `args.cni.labels` (the CNI conventions' list of {key, value}, for every container on that
 * network), then the container's own CILIATE_LABELS in CNI_ARGS (a runtime can set them per
 * container), which win. The agent validates them.
 */
export function podLabelsFrom(conf: NetConf, invocation: CniInvocation): Record<string, string> {
  const labels: Record<string, string> = {};
  const cni = (conf.args as { cni?: { labels?: unknown } } | undefined)?.cni;
  if (cni?.labels !== undefined) {
    let parsed: { key: string; value: string }[];
    try {
      parsed = conventionLabels(cni.labels, 'args.cni.labels');
    } catch (error) {
      throw netConfError(error);
    }
    for (const { key, value } of parsed) labels[key] = value;
  }
  const own = invocation.args[LABELS_ARG];
  for (const pair of own ? own.split(',') : []) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new CniError(CniErrorCode.INVALID_ENVIRONMENT, `CNI_ARGS ${LABELS_ARG}: "${pair}" is not key=value`);
    labels[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return labels;
}

export interface CniOutput {
  /** What the plugin prints on stdout. */
  stdout: string;
  exitCode: number;
}

/** Parses the network configuration, naming the field at fault. */
export function parseNetConf(stdin: string): NetConf {
  let json: unknown;
  try {
    json = JSON.parse(stdin);
  } catch (error) {
    throw new CniError(CniErrorCode.DECODING_FAILURE, `network configuration on stdin is not JSON: ${(error as Error).message}`);
  }
  let conf: NetConf;
  try {
    conf = validateNetConf(json);
  } catch (error) {
    throw netConfError(error);
  }
  if (!(SUPPORTED_VERSIONS as readonly string[]).includes(conf.cniVersion)) {
    throw new CniError(CniErrorCode.INCOMPATIBLE_VERSION, `network configuration: cniVersion ${conf.cniVersion} is not supported (supported: ${SUPPORTED_VERSIONS.join(', ')})`);
  }
  return conf;
}

function netConfError(error: unknown): unknown {
  if (!(error instanceof FieldError)) return error;
  return new CniError(CniErrorCode.INVALID_NETWORK_CONFIG, `network configuration: field ${error.path || '(top level)'}: ${error.message}`);
}

export function readInvocation(env: NodeJS.ProcessEnv): CniInvocation {
  const command = env.CNI_COMMAND ?? '';
  const args: Record<string, string> = {};
  for (const pair of (env.CNI_ARGS ?? '').split(';').filter(Boolean)) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new CniError(CniErrorCode.INVALID_ENVIRONMENT, `CNI_ARGS: "${pair}" is not KEY=VALUE`);
    args[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return { command, containerId: env.CNI_CONTAINERID ?? '', netns: env.CNI_NETNS ?? '', ifname: env.CNI_IFNAME ?? '', args };
}

function requireEnv(value: string, name: string, command: string): string {
  if (!value) throw new CniError(CniErrorCode.INVALID_ENVIRONMENT, `${command}: environment variable ${name} is required`);
  return value;
}

/** The CNI 1.0 result for an endpoint (0.3.x/0.4.0 add interface version fields the same way). */
export function resultFor(conf: NetConf, endpoint: Endpoint, gateway: string) {
  return {
    cniVersion: conf.cniVersion,
    interfaces: [
      { name: endpoint.hostIfname, mac: endpoint.hostMac },
      { name: endpoint.ifname, mac: endpoint.mac, sandbox: endpoint.netns },
    ],
    ips: [{ ...(conf.cniVersion.startsWith('0.3') ? { version: '4' } : {}), address: `${endpoint.ipv4}/32`, gateway, interface: 1 }],
    routes: [{ dst: '0.0.0.0/0', gw: gateway }],
    dns: {},
  };
}

export async function runCni(env: NodeJS.ProcessEnv, stdin: string): Promise<CniOutput> {
  let cniVersion = '1.0.0';
  try {
    const invocation = readInvocation(env);
    if (invocation.command === 'VERSION') {
      const version = tryVersion(stdin) ?? cniVersion;
      return ok({ cniVersion: version, supportedVersions: SUPPORTED_VERSIONS });
    }
    const conf = parseNetConf(stdin);
    cniVersion = conf.cniVersion;
    const client = new AgentClient(conf.socketPath ?? env.CILIATE_SOCKET_PATH ?? DEFAULT_SOCKET);
    const { command } = invocation;
    switch (command) {
      case 'ADD': {
        const containerId = requireEnv(invocation.containerId, 'CNI_CONTAINERID', command);
        const netns = requireEnv(invocation.netns, 'CNI_NETNS', command);
        const ifname = requireEnv(invocation.ifname, 'CNI_IFNAME', command);
        if (!existsSync(netns)) throw new CniError(CniErrorCode.UNKNOWN_CONTAINER, `ADD: network namespace ${netns} does not exist`);
        const labels = podLabelsFrom(conf, invocation);
        // The gateway (the node's router address) does not depend on the add: ask for it at the
        // same time rather than after, one round trip less per pod.
        const [endpoint, status] = await Promise.all([
          agentCall(() =>
            client.call<Endpoint>('POST', '/v1/endpoints', {
              containerId,
              ifname,
              netns,
              podName: invocation.args.K8S_POD_NAME,
              namespace: invocation.args.K8S_POD_NAMESPACE,
              labels,
            }),
          ),
          agentCall(() => client.get<{ ipam: { routerIp: string } }>('/v1/status')),
        ]);
        return ok(resultFor(conf, endpoint, status.ipam.routerIp));
      }
      case 'DEL': {
        // DEL must succeed for anything already gone, even with no netns and no agent state.
        const containerId = requireEnv(invocation.containerId, 'CNI_CONTAINERID', command);
        const ifname = requireEnv(invocation.ifname, 'CNI_IFNAME', command);
        await agentCall(() => client.call('DELETE', `/v1/endpoints/${encodeURIComponent(containerId)}/${encodeURIComponent(ifname)}`));
        return { stdout: '', exitCode: 0 };
      }
      case 'CHECK': {
        const containerId = requireEnv(invocation.containerId, 'CNI_CONTAINERID', command);
        const ifname = requireEnv(invocation.ifname, 'CNI_IFNAME', command);
        const endpoints = await agentCall(() => client.get<Endpoint[]>('/v1/endpoints'));
        const endpoint = endpoints.find((ep) => ep.containerId === containerId && ep.ifname === ifname);
        if (!endpoint) throw new CniError(CniErrorCode.UNKNOWN_CONTAINER, `CHECK: container ${containerId} has no Ciliate interface ${ifname}`);
        if (invocation.netns && invocation.netns !== endpoint.netns) {
          throw new CniError(CniErrorCode.UNKNOWN_CONTAINER, `CHECK: interface ${ifname} of ${containerId} is in ${endpoint.netns}, not ${invocation.netns}`);
        }
        // The spec's CHECK: the interface, its address and routes, and (ours) its datapath.
        const { problems } = await agentCall(() =>
          client.get<{ problems: string[] }>(`/v1/endpoints/${encodeURIComponent(containerId)}/${encodeURIComponent(ifname)}/check`),
        );
        if (problems.length > 0) throw new CniError(CniErrorCode.AGENT_ERROR, `CHECK: interface ${ifname} of ${containerId}: ${problems.join('; ')}`);
        return { stdout: '', exitCode: 0 };
      }
      case 'STATUS': {
        try {
          await client.get('/v1/healthz');
        } catch (error) {
          throw new CniError(CniErrorCode.PLUGIN_NOT_AVAILABLE, `STATUS: the Ciliate agent is not available: ${(error as Error).message}`);
        }
        return { stdout: '', exitCode: 0 };
      }
      default:
        throw new CniError(CniErrorCode.INVALID_ENVIRONMENT, `CNI_COMMAND "${command}" is not one of ADD, DEL, CHECK, STATUS, VERSION`);
    }
  } catch (error) {
    const cniError = error instanceof CniError ? error : new CniError(CniErrorCode.IO_FAILURE, (error as Error).message ?? String(error));
    return { stdout: JSON.stringify(cniError.toJSON(cniVersion)), exitCode: 1 };
  }
}

function ok(value: unknown): CniOutput {
  return { stdout: JSON.stringify(value), exitCode: 0 };
}

function tryVersion(stdin: string): string | undefined {
  try {
    const version = (JSON.parse(stdin) as { cniVersion?: unknown }).cniVersion;
    return typeof version === 'string' ? version : undefined;
  } catch {
    return undefined;
  }
}

async function agentCall<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    if (error instanceof AgentApiError) {
      if (error.code === 'ERR_AGENT_UNREACHABLE') throw new CniError(CniErrorCode.TRY_AGAIN_LATER, error.message);
      throw new CniError(CniErrorCode.AGENT_ERROR, `ciliate agent: ${error.message}`, error.code);
    }
    throw error;
  }
}
