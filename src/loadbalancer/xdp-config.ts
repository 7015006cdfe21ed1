/**
 * `ciliate lb --config lb.yaml`: the standalone load balancer's configuration, validated whole
 * with every problem named by file, field and reason. A file with any problem is refused whole:
 * the running balancer keeps what it has.
 *
 * @example
 * interface: eth0          # XDP attaches here (in the balancer's network namespace)
 * source: 10.0.0.1         # outer source address of the IPIP packets to the backends
 * vips:
 *   - address: 192.0.2.10
 *     port: 80
 *     protocol: TCP
 *     backends:
 *       - address: 10.1.0.2
 *         healthPort: 8080
 *         weight: 100      # share of new flows relative to the others; 0: none
 * @module
 */
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { Addr } from '../net/index.ts';
import { ServiceError } from './errors.ts';
import { XLB_MAX_BACKENDS, XLB_MAX_VIPS } from './xdp-maps.ts';

/** Configuration files larger than this are refused unread (a config is a few KB). */
const MAX_CONFIG_BYTES = 1 << 20;

const ipv4 = z.string().refine((text) => Addr.tryParse(text)?.is4() === true, { message: 'not an IPv4 address' });
const port = z.number().int().min(1).max(65535);

const backendSchema = z
  .object({
    address: ipv4.describe('the backend: IPIP packets go to this address; it must have the VIP on its lo'),
    healthPort: port.optional().describe('TCP port the health check connects to (default: the VIP port)'),
    weight: z.number().int().min(0).max(65535).default(100).describe("the backend's share of new flows relative to the VIP's others (Maglev slots in proportion; 0: none, its flows kept)"),
  })
  .strict();

const vipSchema = z
  .object({
    address: ipv4.describe('the virtual address clients connect to'),
    port: port.describe('the virtual port'),
    protocol: z.enum(['TCP', 'UDP']).default('TCP'),
    backends: z.array(backendSchema).max(XLB_MAX_BACKENDS - 1),
  })
  .strict()
  .superRefine((vip, ctx) => {
    const seen = new Set<string>();
    vip.backends.forEach((backend, i) => {
      if (seen.has(backend.address)) ctx.addIssue({ code: 'custom', path: ['backends', i, 'address'], message: `${backend.address} is listed twice` });
      seen.add(backend.address);
    });
  });

export const xdpLbConfigSchema = z
  .object({
    interface: z.string().min(1).max(15).regex(/^[^/\s]+$/, 'not an interface name').describe('where the XDP program attaches'),
    // On a veth, native XDP can redirect to another veth only when that one's peer runs XDP itself
    // (or has GRO on): generic is the mode that works with any backend-side interface.
    xdpMode: z.enum(['native', 'generic']).default('native').describe('native (driver) or generic (skb) XDP; generic on veths whose peers run no XDP'),
    source: ipv4.describe('outer source address of the encapsulated packets: the balancer\'s own'),
    healthCheck: z
      .object({
        intervalMs: z.number().int().min(50).max(600_000).default(1000),
        timeoutMs: z.number().int().min(10).max(60_000).default(500),
        /** Consecutive failures that take a backend out, successes that put it back. */
        fall: z.number().int().min(1).max(100).default(2),
        rise: z.number().int().min(1).max(100).default(2),
      })
      .strict()
      .prefault({}),
    vips: z.array(vipSchema).max(XLB_MAX_VIPS),
  })
  .strict()
  .superRefine((config, ctx) => {
    const seen = new Set<string>();
    const backends = new Set<string>();
    config.vips.forEach((vip, i) => {
      const key = vipKey(vip);
      if (seen.has(key)) ctx.addIssue({ code: 'custom', path: ['vips', i], message: `${key} is listed twice` });
      seen.add(key);
      for (const b of vip.backends) backends.add(b.address);
    });
    if (backends.size > XLB_MAX_BACKENDS - 1) ctx.addIssue({ code: 'custom', path: ['vips'], message: `${backends.size} distinct backends, at most ${XLB_MAX_BACKENDS - 1}` });
  });

export type XdpLbConfig = z.infer<typeof xdpLbConfigSchema>;
export type XdpLbVipConfig = XdpLbConfig['vips'][number];

/** `192.0.2.10:80/TCP`: a VIP's name in stats, metrics and errors. */
export function vipKey(vip: { address: string; port: number; protocol: string }): string {
  return `${vip.address}:${vip.port}/${vip.protocol}`;
}

/** The config in `text` (YAML), or an ERR_SERVICE_INVALID naming `file`, each field and reason. */
export function parseXdpLbConfig(text: string, file: string): XdpLbConfig {
  let document: unknown;
  try {
    document = parseYaml(text);
  } catch (error) {
    throw new ServiceError('ERR_SERVICE_INVALID', `${file}: not YAML: ${(error as Error).message}`);
  }
  const result = xdpLbConfigSchema.safeParse(document);
  if (result.success) return result.data;
  const problems = result.error.issues.map((issue) => `${file}: ${issue.path.length > 0 ? issue.path.join('.') : '(top)'}: ${issue.message}`);
  throw new ServiceError('ERR_SERVICE_INVALID', problems.join('\n'), { details: problems });
}

export function readXdpLbConfig(file: string): XdpLbConfig {
  let text: Buffer;
  try {
    text = readFileSync(file);
  } catch (error) {
    throw new ServiceError('ERR_SERVICE_INVALID', `${file}: cannot read: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
  if (text.length > MAX_CONFIG_BYTES) throw new ServiceError('ERR_SERVICE_INVALID', `${file}: ${text.length} bytes, over the limit of ${MAX_CONFIG_BYTES}`);
  return parseXdpLbConfig(text.toString('utf8'), file);
}
