/**
 * Agent configuration: the settings every module shares (this file) and each module's own
 * (declared by the module, src/agent/modules), merged into one schema with documented defaults.
 * Defaults are overridden by a YAML file, then by CILIATE_* environment variables, then by flags.
 * Validation names the source and field of every problem, and a bad configuration never starts
 * an agent.
 * @module
 */
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { Addr, NetParseError, Prefix } from '../net/index.ts';
import { codedErrorFamily } from '../errors/index.ts';

// Host bits are refused here, not only later by IPAM, so a typo stops the agent before it starts.
export const ipv4Cidr = z.string().superRefine((text, ctx) => {
  try {
    Prefix.parse(text, { family: 4 });
  } catch (error) {
    if (!NetParseError.is(error)) throw error;
    ctx.addIssue({ code: 'custom', message: `must be an IPv4 CIDR such as 10.244.0.0/16 (${error.reason})` });
  }
});
export const ipv4OrEmpty = z.string().refine((text) => text === '' || Addr.tryParse(text)?.is4() === true, 'must be an IPv4 address (a.b.c.d) or empty');

/** Settings of the agent as a whole, read by several modules. */
export const coreConfig = {
  nodeName: z
    .string()
    .min(1)
    .regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, 'must be a DNS label (lower case, digits, - and .)')
    .default(hostname().toLowerCase())
    .describe("this node's name in the cluster"),
  /** Pinned maps and links live here, so the datapath outlives the agent. */
  bpfRoot: z.string().min(1).default('/sys/fs/bpf/ciliate').describe('bpffs directory for pinned maps and links'),
  clusterCidr: ipv4Cidr
    .default('10.244.0.0/16')
    .describe('pod addresses of the whole cluster; each node gets a slice of it'),
  logLevel: z.enum(['trace', 'debug', 'info', 'warn', 'error']).default('info').describe('trace, debug, info, warn or error'),
  /**
   * Every reconciler (routes, tunnel, ipcache, endpoint map, policy maps, masquerade) compares
   * the kernel with its table this often. 30 s, as a compromise: drift someone caused by hand is
   * repaired within half a minute, while a pass costs one dump of the shared maps and of each
   * endpoint's policy map (some hundred milliseconds of syscalls at 10,000 endpoints), one route
   * and one link listing and one `nft list`. Failed writes do not wait for it: they are retried
   * with backoff from 50 ms.
   */
  reconcileRefreshInterval: z
    .number()
    .min(0)
    .refine((s) => s === 0 || s >= 0.05, 'must be 0 (off) or at least 0.05 seconds')
    .default(30)
    .describe('seconds between comparisons of the kernel with the desired state, repairing drift (0: off)'),
};

export type CoreConfig = z.infer<z.ZodObject<typeof coreConfig>>;

/** Configuration the agent cannot run with: a bad flag, variable or file, or a node it cannot set up as configured. */
export class ConfigError extends codedErrorFamily<'ERR_CONFIG'>('config') {
  constructor(message: string) {
    super('ERR_CONFIG', message);
  }
}

/** CILIATE_NODE_NAME → nodeName, etc. */
export function envName(key: string): string {
  return `CILIATE_${key.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}`;
}

/** The fields of the shared settings and of every module, as one strict schema. */
export function configSchema<S extends z.ZodRawShape>(shape: S): z.ZodObject<S, z.core.$strict> {
  return z.object(shape).strict();
}

/** The schema inside a field's default or optional wrapper: what decides how text from env or flags is read. */
export function innerSchema(field: z.ZodType): z.ZodType {
  return field instanceof z.ZodDefault || field instanceof z.ZodOptional ? (field.unwrap() as z.ZodType) : field;
}

function fromEnv(schema: z.ZodObject, env: NodeJS.ProcessEnv): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, field] of Object.entries(schema.shape)) {
    const value = env[envName(key)];
    if (value === undefined) continue;
    const inner = innerSchema(field as z.ZodType);
    out[key] =
      inner instanceof z.ZodNumber ? Number(value)
      : inner instanceof z.ZodBoolean ? (value === 'true' || value === '1' ? true : value === 'false' || value === '0' ? false : value)
      : inner instanceof z.ZodArray ? value.split(',').filter(Boolean)
      : value;
  }
  return out;
}

function check(schema: z.ZodObject, source: string, input: Record<string, unknown>): void {
  const partial = schema.partial().safeParse(input);
  if (!partial.success) {
    const issue = partial.error.issues[0];
    const field = issue.path.join('.') || '(top level)';
    throw new ConfigError(`${source}: field ${field}: ${issue.message}`);
  }
}

export interface ConfigSources<C = Record<string, unknown>> {
  file?: string;
  env?: NodeJS.ProcessEnv;
  flags?: Partial<C>;
}

/** Merges defaults < file < environment < flags, validating each source on its own. */
export function loadConfigWith<S extends z.ZodObject>(schema: S, sources: ConfigSources<z.infer<S>> = {}): z.infer<S> {
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
    check(schema, sources.file, fileValues);
  }
  const envValues = fromEnv(schema, sources.env ?? {});
  check(schema, 'environment', envValues);
  const flagValues = Object.fromEntries(Object.entries(sources.flags ?? {}).filter(([, v]) => v !== undefined));
  check(schema, 'flags', flagValues);
  return schema.parse({ ...fileValues, ...envValues, ...flagValues });
}
