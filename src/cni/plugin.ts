/**
 * The CNI plugin's logic (CNI spec 1.0, with STATUS from 1.1), run inside the agent: the plugin
 * binary a runtime executes (src/cni/shim/ciliate-cni.c) forwards its CNI_* variables and stdin
 * to POST /v1/cni, and prints what this makes of them. Validation naming the field at fault,
 * dispatch, results per cniVersion and CNI error codes are all here, against the agent's own
 * endpoints (the CniAgent the cni module wires in), with no round trip of its own.
 * @module
 */
import { existsSync } from 'node:fs';
import { CONTAINER_ID, type Endpoint, type EndpointContainer } from '../agent/endpoint.ts';
import { CniError, CniErrorCode } from './errors.ts';
import { parseNamedPort, type NamedPortText } from '../loadbalancer/index.ts';

/** The agent's route the plugin binary sends each invocation to. */
export const CNI_ROUTE = '/v1/cni';
/** The header of the route's answer naming the plugin's exit code (its body is what the plugin prints). */
export const CNI_EXIT_HEADER = 'ciliate-cni-exit';

/** What the plugin prints for VERSION (the plugin binary answers it itself, from the same list: a test compares them). */
export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const;
const NETWORK_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

/** The network configuration (CNI spec 1.0 "Network configuration"); unknown keys pass through. */
export interface NetConf {
  cniVersion: string;
  name: string;
  type: string;
  /** Ciliate: the agent's API socket (the plugin binary connects there; see ciliate-cni.c). */
  socketPath?: string;
  args?: Record<string, unknown>;
  runtimeConfig?: Record<string, unknown>;
  prevResult?: unknown;
  capabilities?: Record<string, boolean>;
  dns?: unknown;
  ipam?: unknown;
  [key: string]: unknown;
}

// Validated by hand rather than with zod: the messages follow CNI's own field names and codes
// (7 for a bad configuration, 1 for an unsupported version), and unknown keys must pass through.

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

/**
 * The endpoint's containers, when the invocation tells them: podman's CNI backend passes only
 * K8S_POD_NAME, the container's name, and CNI_CONTAINERID is that container (its network is its
 * own). A CRI runtime passes K8S_POD_NAMESPACE too, with its pod sandbox's id: its containers are
 * not known here, and a CRI integration gives them (PUT /v1/endpoints/<id>/containers).
 */
export function podContainersFrom(invocation: CniInvocation): EndpointContainer[] | undefined {
  const name = invocation.args.K8S_POD_NAME;
  if (!name || invocation.args.K8S_POD_NAMESPACE !== undefined || !CONTAINER_ID.test(invocation.containerId)) return undefined;
  return [{ id: invocation.containerId, name }];
}

/** CNI_ARGS key for a container's named ports: `CILIATE_PORTS=http=8080/TCP,dns=53/UDP`. */
export const PORTS_ARG = 'CILIATE_PORTS';

/**
 * The pod's named ports (what a service's named targetPort resolves to) from CILIATE_PORTS in
 * CNI_ARGS: `name=PORT[/PROTOCOL]`, comma-separated (CNI has no field for a pod's ports). The
 * agent validates names, numbers and protocols.
 */
export function podPortsFrom(invocation: CniInvocation): NamedPortText[] | undefined {
  const text = invocation.args[PORTS_ARG];
  if (text === undefined) return undefined;
  return text
    .split(',')
    .filter(Boolean)
    .map((item) => {
      const port = parseNamedPort(item);
      if (!port) throw new CniError(CniErrorCode.INVALID_ENVIRONMENT, `CNI_ARGS ${PORTS_ARG}: "${item}" is not name=PORT[/PROTOCOL]`);
      return port;
    });
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

/** The CNI_* variables of an invocation, as the plugin binary forwards them. */
export type CniEnv = Readonly<Partial<Record<'CNI_COMMAND' | 'CNI_CONTAINERID' | 'CNI_NETNS' | 'CNI_IFNAME' | 'CNI_ARGS' | 'CNI_PATH', string>>>;

export function readInvocation(env: CniEnv): CniInvocation {
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

/**
 * What the CNI logic needs of the agent: its endpoints and the node's router address. Each call
 * may throw the agent's coded errors, which become CNI error 100 naming the error's code.
 */
export interface CniAgent {
  /** Creates the endpoint, validating the request as POST /v1/endpoints does. */
  add(request: {
    containerId: string;
    ifname: string;
    netns: string;
    podName?: string;
    namespace?: string;
    labels: Record<string, string>;
    ports?: NamedPortText[];
    containers?: EndpointContainer[];
  }): Promise<Endpoint>;
  /** Removes it; nothing to remove is not an error. */
  delete(containerId: string, ifname: string): Promise<unknown>;
  endpoint(containerId: string, ifname: string): Endpoint | undefined;
  /** What is wrong with the endpoint's networking and datapath, nothing when all is as ADD made it. */
  check(containerId: string, ifname: string): Promise<string[]>;
  /** The pods' gateway: the node's router address. */
  routerIp(): string;
}

export async function runCni(env: CniEnv, stdin: string, agent: CniAgent): Promise<CniOutput> {
  let cniVersion = '1.0.0';
  try {
    const invocation = readInvocation(env);
    if (invocation.command === 'VERSION') {
      const version = tryVersion(stdin) ?? cniVersion;
      return ok({ cniVersion: version, supportedVersions: SUPPORTED_VERSIONS });
    }
    const conf = parseNetConf(stdin);
    cniVersion = conf.cniVersion;
    const { command } = invocation;
    switch (command) {
      case 'ADD': {
        const containerId = requireEnv(invocation.containerId, 'CNI_CONTAINERID', command);
        const netns = requireEnv(invocation.netns, 'CNI_NETNS', command);
        const ifname = requireEnv(invocation.ifname, 'CNI_IFNAME', command);
        if (!existsSync(netns)) throw new CniError(CniErrorCode.UNKNOWN_CONTAINER, `ADD: network namespace ${netns} does not exist`);
        const labels = podLabelsFrom(conf, invocation);
        const ports = podPortsFrom(invocation);
        const containers = podContainersFrom(invocation);
        const endpoint = await agentCall(() =>
          agent.add({ containerId, ifname, netns, podName: invocation.args.K8S_POD_NAME, namespace: invocation.args.K8S_POD_NAMESPACE, labels, ...(ports ? { ports } : {}), ...(containers ? { containers } : {}) }),
        );
        return ok(resultFor(conf, endpoint, agent.routerIp()));
      }
      case 'DEL': {
        // DEL must succeed for anything already gone, even with no netns and no agent state.
        const containerId = requireEnv(invocation.containerId, 'CNI_CONTAINERID', command);
        const ifname = requireEnv(invocation.ifname, 'CNI_IFNAME', command);
        await agentCall(() => agent.delete(containerId, ifname));
        return { stdout: '', exitCode: 0 };
      }
      case 'CHECK': {
        const containerId = requireEnv(invocation.containerId, 'CNI_CONTAINERID', command);
        const ifname = requireEnv(invocation.ifname, 'CNI_IFNAME', command);
        const endpoint = agent.endpoint(containerId, ifname);
        if (!endpoint) throw new CniError(CniErrorCode.UNKNOWN_CONTAINER, `CHECK: container ${containerId} has no Ciliate interface ${ifname}`);
        if (invocation.netns && invocation.netns !== endpoint.netns) {
          throw new CniError(CniErrorCode.UNKNOWN_CONTAINER, `CHECK: interface ${ifname} of ${containerId} is in ${endpoint.netns}, not ${invocation.netns}`);
        }
        // The spec's CHECK: the interface, its address and routes, and (ours) its datapath.
        const problems = await agentCall(() => agent.check(containerId, ifname));
        if (problems.length > 0) throw new CniError(CniErrorCode.AGENT_ERROR, `CHECK: interface ${ifname} of ${containerId}: ${problems.join('; ')}`);
        return { stdout: '', exitCode: 0 };
      }
      case 'STATUS':
        // Answered by the agent itself: it is up. (The plugin binary answers 50 when it cannot reach it.)
        return { stdout: '', exitCode: 0 };
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

/** An agent call whose failure becomes CNI error 100 with the agent's message and, as details, its error code. */
async function agentCall<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    throw new CniError(CniErrorCode.AGENT_ERROR, `ciliate agent: ${(error as Error).message ?? String(error)}`, typeof code === 'string' ? code : 'ERR_INTERNAL');
  }
}
