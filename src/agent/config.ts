/**
 * Agent configuration: documented defaults, overridden by a YAML file, then by CILIATE_*
 * environment variables, then by flags. Validation names the source and field of every problem,
 * and a bad configuration never starts an agent.
 * @module
 */
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';

export const RoutingMode = z.enum(['tunnel', 'native']);
export type RoutingMode = z.infer<typeof RoutingMode>;

const ipv4Cidr = z.string().regex(/^(\d{1,3}\.){3}\d{1,3}\/\d{1,2}$/, 'must be an IPv4 CIDR such as 10.244.0.0/16');

export const AgentConfigSchema = z
  .object({
    /** This node's name in the cluster. */
    nodeName: z.string().min(1).regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, 'must be a DNS label (lower case, digits, - and .)').default(hostname().toLowerCase()),
    /** Where the embedded state store keeps its files. */
    stateDir: z.string().min(1).default('/var/lib/ciliate'),
    /** The local API: JSON over HTTP on a root-only Unix socket. */
    socketPath: z.string().min(1).default('/var/run/ciliate/ciliate.sock'),
    /** bpffs directory for this agent's pinned maps and links. */
    bpfRoot: z.string().min(1).default('/sys/fs/bpf/ciliate'),
    /** Pod addresses of the whole cluster; each node gets a slice of it. */
    clusterCidr: ipv4Cidr.default('10.244.0.0/16'),
    /** Prefix length of each node's pod CIDR. */
    nodeCidrMaskSize: z.number().int().min(8).max(30).default(24),
    /** tunnel: VXLAN between nodes; native: pod CIDRs routed on the underlay. */
    routingMode: RoutingMode.default('tunnel'),
    /** Masquerade pod traffic leaving the cluster CIDR behind the node's address. */
    masquerade: z.boolean().default(true),
    /** The node's underlay address (what other nodes reach it at); empty = first global address. */
    nodeIp: z.union([z.literal(''), z.ipv4()]).default(''),
    /** `local`: embedded store in stateDir (one node). `etcd`: shared store for several nodes. */
    store: z.enum(['local', 'etcd']).default('local'),
    etcdEndpoints: z.array(z.string().url()).default([]),
    /**
     * Seconds between identity garbage-collection passes, which delete cluster-wide identities no
     * node references any more; 0 turns them off. Every node runs them, and they are safe to run
     * together: a node's references stay in the store while its agent is down, and the delete
     * fails if any node takes a reference meanwhile. 15 minutes, as Cilium's identity-gc-interval.
     */
    identityGcInterval: z.number().min(0).refine((s) => s === 0 || s >= 0.1, 'must be 0 (off) or at least 0.1 seconds').default(900),
    /**
     * Seconds an identity is kept after its last reference went, so a pod re-created with the
     * same labels (a rollout, a restart) gets its number back instead of a policy recomputation
     * on every node.
     */
    identityGcGracePeriod: z.number().min(0).default(300),
    /**
     * Seconds between the reconcilers' comparisons of the kernel with the desired state (routes,
     * tunnel, ipcache, endpoint map, policy maps, masquerade), which repair drift and remove what
     * nobody wants; 0 turns them off. 30 s, as a compromise: drift someone caused by hand is
     * repaired within half a minute, while a pass costs one dump of the shared maps and of each
     * endpoint's policy map (some hundred milliseconds of syscalls at 10,000 endpoints), one
     * `ip route`, one `ip link` and one `nft list` — negligible at that cadence. Failed writes do
     * not wait for it: they are retried with backoff from 50 ms.
     */
    reconcileRefreshInterval: z.number().min(0).refine((s) => s === 0 || s >= 0.05, 'must be 0 (off) or at least 0.05 seconds').default(30),
    /**
     * Entries of each endpoint's policy map (Cilium's bpf-policy-map-max, 16384). Endpoints whose
     * policy needs more fail to be written, are retried and make the agent degraded.
     */
    policyMapMaxEntries: z.number().int().min(1).max(1 << 20).default(16384),
    logLevel: z.enum(['trace', 'debug', 'info', 'warn', 'error']).default('info'),
  })
  .strict();

export type AgentConfig = z.infer<typeof AgentConfigSchema>;
type ConfigKey = keyof AgentConfig;

export class ConfigError extends Error {
  readonly code = 'ERR_CONFIG';
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/** CILIATE_NODE_NAME → nodeName, etc. */
export function envName(key: ConfigKey): string {
  return `CILIATE_${key.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}`;
}

const FIELDS = Object.keys(AgentConfigSchema.shape) as ConfigKey[];

function fromEnv(env: NodeJS.ProcessEnv): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of FIELDS) {
    const value = env[envName(key)];
    if (value === undefined) continue;
    const inner = AgentConfigSchema.shape[key].unwrap();
    out[key] =
      inner instanceof z.ZodNumber ? Number(value)
      : inner instanceof z.ZodBoolean ? (value === 'true' || value === '1' ? true : value === 'false' || value === '0' ? false : value)
      : inner instanceof z.ZodArray ? value.split(',').filter(Boolean)
      : value;
  }
  return out;
}

function check(source: string, input: Record<string, unknown>): void {
  const partial = AgentConfigSchema.partial().safeParse(input);
  if (!partial.success) {
    const issue = partial.error.issues[0];
    const field = issue.path.join('.') || '(top level)';
    throw new ConfigError(`${source}: field ${field}: ${issue.message}`);
  }
}

export interface ConfigSources {
  file?: string;
  env?: NodeJS.ProcessEnv;
  flags?: Partial<AgentConfig>;
}

/** Merges defaults < file < environment < flags, validating each source on its own. */
export function loadConfig(sources: ConfigSources = {}): AgentConfig {
  let fileValues: Record<string, unknown> = {};
  if (sources.file) {
    let text: string;
    try {
      text = readFileSync(sources.file, 'utf8');
    } catch (error) {
      throw new ConfigError(`${sources.file}: cannot read: ${(error as Error).message}`);
    }
    let parsed: unknown;
    try {
      parsed = parseYaml(text);
    } catch (error) {
      throw new ConfigError(`${sources.file}: not valid YAML: ${(error as Error).message}`);
    }
    if (parsed !== null && (typeof parsed !== 'object' || Array.isArray(parsed))) throw new ConfigError(`${sources.file}: must be a mapping of settings`);
    fileValues = (parsed ?? {}) as Record<string, unknown>;
    check(sources.file, fileValues);
  }
  const envValues = fromEnv(sources.env ?? {});
  check('environment', envValues);
  const flagValues = Object.fromEntries(Object.entries(sources.flags ?? {}).filter(([, v]) => v !== undefined));
  check('flags', flagValues);
  return AgentConfigSchema.parse({ ...fileValues, ...envValues, ...flagValues });
}
