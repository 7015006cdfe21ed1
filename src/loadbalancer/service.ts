/**
 * Services as Kubernetes has them: a ClusterIP (allocated from the service CIDR unless asked
 * for), NodePort and LoadBalancer types, externalIPs and LoadBalancer IPs, several ports each
 * with protocol, port, target port and node port, and backends either selected by labels over the
 * pods of the service's namespace (on every node) or listed explicitly.
 *
 * The request schema validates a definition whole and names the field of every problem: a bad
 * definition writes nothing.
 * @module
 */
import { z } from 'zod';
import { Addr, Prefix } from '../net/index.ts';
import { k8sLabelKeyProblem, LABEL_VALUE, portNameProblem } from '../policy/index.ts';

export const SERVICE_TYPES = ['ClusterIP', 'NodePort', 'LoadBalancer'] as const;
export type ServiceType = (typeof SERVICE_TYPES)[number];

export const SERVICE_PROTOCOLS = ['TCP', 'UDP', 'SCTP'] as const;
export type ServiceProtocol = (typeof SERVICE_PROTOCOLS)[number];

/** IANA numbers, as the datapath keys frontends and backends. */
export const PROTOCOL_NUMBER: Readonly<Record<ServiceProtocol, number>> = { TCP: 6, UDP: 17, SCTP: 132 };

export interface ServicePort {
  /** Required when the service has several ports (Kubernetes' rule). */
  name?: string;
  protocol: ServiceProtocol;
  port: number;
  /**
   * The backends' port; defaults to `port`. A name (Kubernetes' named targetPort) is each
   * selected pod's port of that name and the service port's protocol, so pods may serve on
   * different numbers; a pod without one is no backend of this port (as Kubernetes' endpoints
   * controller leaves it out), listed as unresolved on the frontend.
   */
  targetPort: number | string;
  /** NodePort and LoadBalancer services: the port on every node (allocated when not asked for). */
  nodePort?: number;
}

/** A pod's named port (a container port with a name, as Kubernetes' pod spec has it). */
export interface NamedPort {
  name: string;
  port: number;
  protocol: ServiceProtocol;
}

/**
 * A backend's state (Kubernetes' EndpointSlice conditions, Cilium's backend states): an active
 * backend takes new connections; a terminating one keeps its established connections (its
 * backend entry stays) but is out of every selection slot, so it gets no new ones.
 */
export const BACKEND_STATES = ['active', 'terminating'] as const;
export type BackendState = (typeof BACKEND_STATES)[number];

/** An explicitly listed backend, as a Service without selector and its EndpointSlice. */
export interface ExplicitBackend {
  ip: string;
  /** Absent: active. */
  state?: 'terminating';
}

/** A service as stored (`services/specs/<namespace>/<name>`): the same on every node. */
export interface Service {
  namespace: string;
  name: string;
  type: ServiceType;
  clusterIP: string;
  ports: ServicePort[];
  /** The service's own labels (what a policy's `toServices` k8sServiceSelector selects on). */
  labels?: Record<string, string>;
  /** Pods of `namespace` whose labels include all of these are the backends. */
  selector?: Record<string, string>;
  /** Backends listed explicitly (a service without selector). */
  backends?: ExplicitBackend[];
  externalIPs: string[];
  loadBalancerIPs: string[];
  /** ClientIP session affinity: a client (pod) keeps its backend while it connects within the timeout. */
  sessionAffinity?: { timeoutSeconds: number };
  /** externalTrafficPolicy Local: clients from outside get this node's backends only (absent: Cluster). */
  externalTrafficLocal?: true;
  createdAt: string;
}

export interface ServiceRequestLimits {
  /** ClusterIPs come from here; a requested one must be inside it. */
  serviceCidr: string;
  /** Node ports come from here (Kubernetes' 30000-32767 by default). */
  nodePortRange: { min: number; max: number };
  /** The pods' addresses: no external or LoadBalancer IP may be one of them. */
  clusterCidr?: string;
}

/**
 * Addresses no external or LoadBalancer IP may take: a frontend there would capture traffic every
 * process of the node sends to it (Kubernetes' CVE-2020-8554 is this, with a pod's address).
 */
const RESERVED_FRONTEND_RANGES = ['0.0.0.0/8', '127.0.0.0/8', '169.254.0.0/16', '224.0.0.0/4', '240.0.0.0/4'].map((p) => Prefix.parse(p));

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
/** Kubernetes IANA_SVC_NAME: a port name. */
const PORT_NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

const port = z.number({ error: 'must be a port number' }).int('must be an integer').min(1, 'must be 1-65535').max(65535, 'must be 1-65535');

/**
 * A port's name as Kubernetes validates it (IANA_SVC_NAME): a container port's, and what a
 * named targetPort refers to. At least one letter, so it never reads as a number.
 */
export const portNameSchema = z.string({ error: 'must be a port name' }).superRefine((name, ctx) => {
  const problem = portNameProblem(name);
  if (problem !== undefined) ctx.addIssue({ code: 'custom', message: problem });
});

/** A port number, or the name of a port of each backend pod. */
const targetPort = z.union([z.number(), z.string()], { error: 'must be a port number or a port name' }).superRefine((value, ctx) => {
  const parsed = (typeof value === 'number' ? port : portNameSchema).safeParse(value);
  if (!parsed.success) for (const issue of parsed.error.issues) ctx.addIssue({ code: 'custom', message: issue.message });
});

/** A pod's named ports (POST /v1/endpoints `ports`): names unique per protocol, as Kubernetes' container ports. */
export const namedPortsSchema = z
  .array(z.object({ name: portNameSchema, port, protocol: z.enum(SERVICE_PROTOCOLS, { error: `must be one of ${SERVICE_PROTOCOLS.join(', ')}` }).default('TCP') }).strict(), { error: 'must be a list of {name, port, protocol}' })
  .max(64, 'at most 64 named ports')
  .superRefine((ports, ctx) => {
    const seen = new Set<string>();
    ports.forEach((p, i) => {
      if (seen.has(p.name)) ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `name ${p.name} is used twice` });
      seen.add(p.name);
    });
  });
const ipv4 = z.string().refine((text) => Addr.tryParse(text)?.is4() === true, 'must be an IPv4 address (a.b.c.d)');

const dnsLabel = z.string().max(63, 'must be at most 63 characters').regex(DNS_LABEL, 'must be a DNS label (lower case letters, digits and -)');

/** A service's namespace and name, as the API's paths carry them. */
export const serviceRefSchema = z.object({ namespace: dnsLabel, name: dnsLabel });

/** The request body of `POST /v1/services`: a service definition before allocation. */
export function serviceRequestSchema(limits: ServiceRequestLimits) {
  const cidr = Prefix.parse(limits.serviceCidr, { family: 4 });
  const pods = limits.clusterCidr === undefined ? undefined : Prefix.parse(limits.clusterCidr, { family: 4 });
  const { min, max } = limits.nodePortRange;
  /** Why `ip` cannot be an external or LoadBalancer IP, if it cannot. */
  const frontendProblem = (text: string): string | undefined => {
    const ip = Addr.tryParse(text);
    if (!ip) return undefined; // the field's own check names it
    if (cidr.contains(ip)) return `${text} is in the service CIDR ${cidr}: only ClusterIPs are`;
    if (pods?.contains(ip)) return `${text} is in the cluster CIDR ${pods}: a pod's address cannot be a service's`;
    const reserved = RESERVED_FRONTEND_RANGES.find((r) => r.contains(ip));
    return reserved ? `${text} is in ${reserved} (this-network, loopback, link-local, multicast or reserved)` : undefined;
  };
  return z
    .object({
      name: dnsLabel,
      namespace: dnsLabel.default('default'),
      type: z.enum(SERVICE_TYPES, { error: `must be one of ${SERVICE_TYPES.join(', ')}` }).default('ClusterIP'),
      clusterIP: z
        .string()
        .superRefine((text, ctx) => {
          const ip = Addr.tryParse(text);
          const problem = ip?.is4() !== true
            ? 'must be an IPv4 address (a.b.c.d)'
            : !cidr.contains(ip)
              ? `must be inside the service CIDR ${cidr}`
              : ip.equals(cidr.first()) || ip.equals(cidr.last())
                ? `must not be the first or last address of ${cidr}`
                : undefined;
          if (problem) ctx.addIssue({ code: 'custom', message: problem });
        })
        .optional(),
      ports: z
        .array(
          z
            .object({
              name: z.string().max(15, 'must be at most 15 characters').regex(PORT_NAME, 'must be lower case letters, digits and -').optional(),
              protocol: z.enum(SERVICE_PROTOCOLS, { error: `must be one of ${SERVICE_PROTOCOLS.join(', ')}` }).default('TCP'),
              port,
              targetPort: targetPort.optional(),
              nodePort: port.refine((p) => p >= min && p <= max, `must be in the node port range ${min}-${max}`).optional(),
            })
            .strict(),
          { error: 'must be a list of ports' },
        )
        .min(1, 'a service needs at least one port')
        .max(100, 'at most 100 ports'),
      labels: z.record(z.string(), z.string({ error: 'label values must be strings' }), { error: 'must be an object of labels' }).optional(),
      selector: z.record(z.string(), z.string({ error: 'label values must be strings' }), { error: 'must be an object of labels' }).optional(),
      backends: z
        .array(z.object({ ip: ipv4, state: z.enum(BACKEND_STATES, { error: `must be one of ${BACKEND_STATES.join(', ')}` }).optional() }).strict())
        .max(1000, 'at most 1000 explicit backends')
        .optional(),
      externalIPs: z.array(ipv4).max(100).default([]),
      loadBalancerIPs: z.array(ipv4).max(100).default([]),
      sessionAffinity: z.enum(['None', 'ClientIP'], { error: 'must be None or ClientIP' }).default('None'),
      externalTrafficPolicy: z.enum(['Cluster', 'Local'], { error: 'must be Cluster or Local' }).default('Cluster'),
      sessionAffinityConfig: z
        .object({
          clientIP: z
            .object({
              // Kubernetes' bounds and default (3 hours).
              timeoutSeconds: z.number({ error: 'must be a number of seconds' }).int('must be an integer').min(1, 'must be 1-86400').max(86400, 'must be 1-86400').default(10800),
            })
            .strict()
            .default({ timeoutSeconds: 10800 }),
        })
        .strict()
        .optional(),
    })
    .strict()
    .superRefine((spec, ctx) => {
      const issue = (path: (string | number)[], message: string) => ctx.addIssue({ code: 'custom', path, message });
      for (const field of ['labels', 'selector'] as const) {
        for (const [key, value] of Object.entries(spec[field] ?? {})) {
          const problem = k8sLabelKeyProblem(key);
          if (problem) issue([field, key], problem);
          else if (value.length > 63 || !LABEL_VALUE.test(value)) issue([field, key], `label value "${value}": at most 63 characters of [A-Za-z0-9-_.], alphanumeric at both ends`);
        }
      }
      if (spec.selector && spec.backends) issue(['backends'], 'a service selects its backends by selector or lists them, not both');
      const backendIps = new Set<string>();
      spec.backends?.forEach((b, i) => {
        if (backendIps.has(b.ip)) issue(['backends', i, 'ip'], `${b.ip} is listed twice`);
        backendIps.add(b.ip);
      });
      const seen = new Map<string, number>();
      const names = new Set<string>();
      spec.ports.forEach((p, i) => {
        const key = `${p.port}/${p.protocol}`;
        if (seen.has(key)) issue(['ports', i, 'port'], `${key} is also port ${seen.get(key)}`);
        seen.set(key, i);
        if (spec.ports.length > 1 && !p.name) issue(['ports', i, 'name'], 'every port needs a name when a service has several');
        if (p.name && names.has(p.name)) issue(['ports', i, 'name'], `name ${p.name} is used twice`);
        if (p.name) names.add(p.name);
        if (p.nodePort !== undefined && spec.type === 'ClusterIP') issue(['ports', i, 'nodePort'], 'only NodePort and LoadBalancer services have node ports');
        if (typeof p.targetPort === 'string' && !spec.selector) issue(['ports', i, 'targetPort'], `a named target port ("${p.targetPort}") needs a selector: it is resolved from each selected pod's ports, and listed backends have none`);
        // SCTP's CRC32c covers its ports, and TC cannot recompute it: a packet keeps its port (as
        // Cilium's SCTP support). Node ports and SNAT would change it.
        if (p.protocol === 'SCTP') {
          if (p.targetPort !== undefined && p.targetPort !== p.port) issue(['ports', i, 'targetPort'], `an SCTP port is never translated to another (its CRC32c covers the ports and is not recomputed in TC, as in Cilium): targetPort must be ${p.port}`);
          if (spec.type !== 'ClusterIP' || spec.externalIPs.length > 0) issue(['ports', i, 'protocol'], 'SCTP only on ClusterIP services without externalIPs: node ports and north-south SNAT change the port, which SCTP\'s checksum covers');
        }
      });
      for (const field of ['externalIPs', 'loadBalancerIPs'] as const) {
        spec[field].forEach((ip, i) => {
          const problem = frontendProblem(ip);
          if (problem) issue([field, i], problem);
        });
      }
      if (spec.sessionAffinityConfig && spec.sessionAffinity !== 'ClientIP') issue(['sessionAffinityConfig'], 'only with sessionAffinity ClientIP');
      if (spec.loadBalancerIPs.length > 0 && spec.type !== 'LoadBalancer') issue(['loadBalancerIPs'], 'only LoadBalancer services have LoadBalancer IPs');
      // Kubernetes' rule: the policy is about traffic from outside, which ClusterIP services have none of.
      if (spec.externalTrafficPolicy === 'Local' && spec.type === 'ClusterIP' && spec.externalIPs.length === 0) issue(['externalTrafficPolicy'], 'Local only for NodePort and LoadBalancer services, or with externalIPs');
    });
}

export type ServiceRequest = z.output<ReturnType<typeof serviceRequestSchema>>;

/** `namespace/name`: a service's key in tables and the API. */
export function serviceKey(service: { namespace: string; name: string }): string {
  return `${service.namespace}/${service.name}`;
}

/** What a frontend address is to its service. */
export type FrontendKind = 'ClusterIP' | 'ExternalIP' | 'LoadBalancer' | 'NodePort';

/** One address, port and protocol clients connect to, with the backends it balances over. */
export interface Frontend {
  /** `vip:port/PROTO` */
  key: string;
  service: string;
  kind: FrontendKind;
  /** NodePort frontends: 0.0.0.0 (any node address), and this node's own addresses. */
  vip: string;
  port: number;
  protocol: ServiceProtocol;
  /** The active backends, sorted by address, so equal sets compare equal and every node orders them alike. */
  backends: Backend[];
  /**
   * Terminating backends (sorted too): their entries stay so established connections keep
   * translating, but no slot names them. Absent when there are none.
   */
  terminating?: Backend[];
  /** ClientIP session affinity's timeout in seconds; absent without affinity. */
  affinityTimeout?: number;
  /**
   * A named target port: the selected pods without a port of that name and protocol (sorted),
   * which are no backends of this frontend. Absent when every pod has it.
   */
  unresolved?: string[];
  /** An external frontend (not the ClusterIP) of an externalTrafficPolicy Local service. */
  externalLocal?: true;
}

export interface Backend {
  ip: string;
  port: number;
  protocol: ServiceProtocol;
}

/** `ip:port/PROTO`: what a backend is called on every node (Maglev hashes it). */
export function backendName(backend: Backend): string {
  return `${backend.ip}:${backend.port}/${backend.protocol}`;
}

export function frontendKey(vip: string, port: number, protocol: ServiceProtocol): string {
  return `${vip}:${port}/${protocol}`;
}

/** The pods a selector picks: all of its labels match (Kubernetes Service selectors are matchLabels). */
export function selects(selector: Readonly<Record<string, string>>, labels: Readonly<Record<string, string>>): boolean {
  for (const [key, value] of Object.entries(selector)) if (labels[key] !== value) return false;
  return true;
}

/** A named port as text spells it (`ciliate endpoint add --port`, CNI_ARGS CILIATE_PORTS): its parts, which the endpoint API validates. */
export interface NamedPortText {
  name: string;
  port: number | string;
  protocol?: string;
}

/**
 * `name=PORT[/PROTOCOL]` (`http=8080/TCP`), or undefined when it is not that shape. A port that
 * is not digits stays text, for the endpoint API to name.
 *
 * @example
 * parseNamedPort('dns=53/udp'); // { name: 'dns', port: 53, protocol: 'UDP' }
 */
export function parseNamedPort(text: string): NamedPortText | undefined {
  const match = /^([^=]+)=([^/]+)(?:\/(.+))?$/.exec(text);
  if (!match) return undefined;
  const [, name, port, protocol] = match;
  return { name, port: /^\d+$/.test(port) ? Number(port) : port, ...(protocol ? { protocol: protocol.toUpperCase() } : {}) };
}

/** A backend as a service's frontends are made from it: an address, and a pod's named ports. */
export interface BackendSource {
  ip: string;
  ports?: readonly NamedPort[];
}

/**
 * A service's frontends with `active` (its pods, or its explicit backends) and `terminating`
 * (backends on their way out; an address in both is active): one per port on the ClusterIP,
 * every external IP and LoadBalancer IP, and each node port, at 0.0.0.0 (the socket hooks' and
 * bpf_host's any node address) and at each of `nodeAddresses` (this node's own, as Cilium's
 * NodePort frontends per local address: a pod TC translates gets its replies from the very address
 * it asked, which that frontend's reverse NAT entry holds). A named target port is resolved per
 * backend; one without it is left out (`unresolved`).
 */
export function serviceFrontends(service: Service, active: readonly BackendSource[], terminating: readonly BackendSource[] = [], nodeAddresses: readonly string[] = []): Frontend[] {
  const byIp = (sources: readonly BackendSource[]) => [...new Map(sources.map((b) => [b.ip, b])).values()].sort((a, b) => compareIps(a.ip, b.ip));
  const current = byIp(active);
  const activeIps = new Set(current.map((b) => b.ip));
  const leaving = byIp(terminating).filter((b) => !activeIps.has(b.ip));
  const out: Frontend[] = [];
  const key = serviceKey(service);
  for (const p of service.ports) {
    const unresolved: string[] = [];
    const resolve = (sources: readonly BackendSource[], missing?: string[]): Backend[] =>
      sources.flatMap((b) => {
        const port = typeof p.targetPort === 'number' ? p.targetPort : b.ports?.find((n) => n.name === p.targetPort && n.protocol === p.protocol)?.port;
        if (port !== undefined) return [{ ip: b.ip, port, protocol: p.protocol }];
        missing?.push(b.ip);
        return [];
      });
    const backends = resolve(current, unresolved);
    const leavingBackends = resolve(leaving);
    const affinity = service.sessionAffinity ? { affinityTimeout: service.sessionAffinity.timeoutSeconds } : {};
    const terminatingPart = leavingBackends.length > 0 ? { terminating: leavingBackends } : {};
    const add = (kind: FrontendKind, vip: string, port: number) =>
      out.push({
        key: frontendKey(vip, port, p.protocol),
        service: key,
        kind,
        vip,
        port,
        protocol: p.protocol,
        backends,
        ...terminatingPart,
        ...affinity,
        ...(kind !== 'ClusterIP' && service.externalTrafficLocal ? { externalLocal: true as const } : {}),
        ...(unresolved.length > 0 ? { unresolved } : {}),
      });
    add('ClusterIP', service.clusterIP, p.port);
    for (const ip of service.externalIPs) add('ExternalIP', ip, p.port);
    for (const ip of service.loadBalancerIPs) add('LoadBalancer', ip, p.port);
    if (p.nodePort !== undefined) for (const vip of ['0.0.0.0', ...nodeAddresses]) add('NodePort', vip, p.nodePort);
  }
  return out;
}

function compareIps(a: string, b: string): number {
  return Addr.parse(a).compare(Addr.parse(b));
}
