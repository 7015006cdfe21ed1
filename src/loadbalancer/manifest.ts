/**
 * Kubernetes Service manifests (`apiVersion: v1`, `kind: Service`, several documents a file) into
 * service requests, validated whole: every problem of every document is named by document and
 * field path (`spec.ports[0].port`), and a file with any problem yields no service. What the model
 * does not do yet (ExternalName, headless, `internalTrafficPolicy: Local`, IPv6) is
 * refused, never silently dropped.
 * @module
 */
import { parseAllDocuments } from 'yaml';
import { ServiceError } from './errors.ts';
import type { serviceRequestSchema, ServiceRequest } from './service.ts';

export interface ManifestProblem {
  /** 1-based document number in the file. */
  document: number;
  /** The manifest's field, e.g. spec.ports[0].port. */
  path: string;
  message: string;
}

/** Spec fields read; the rest of a manifest's spec must be absent. */
const SPEC_FIELDS = new Set([
  'type', 'clusterIP', 'clusterIPs', 'ports', 'selector', 'externalIPs', 'loadBalancerIP', 'sessionAffinity', 'sessionAffinityConfig',
  'ipFamilies', 'ipFamilyPolicy', 'internalTrafficPolicy', 'externalTrafficPolicy', 'publishNotReadyAddresses', 'allocateLoadBalancerNodePorts',
]);
const PORT_FIELDS = new Set(['name', 'protocol', 'port', 'targetPort', 'nodePort', 'appProtocol']);

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A request field's path as the manifest spells it. */
function manifestPath(path: readonly PropertyKey[]): string {
  const [head, ...rest] = path;
  if (head === 'name' || head === 'namespace' || head === 'labels') return `metadata${[head, ...rest].map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`)).join('')}`;
  if (head === 'loadBalancerIPs') return 'spec.loadBalancerIP';
  return `spec${[head, ...rest].map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`)).join('')}`;
}

/**
 * The service requests of a manifest file; throws ServiceError ERR_SERVICE_INVALID naming the
 * first problem, with all of them in `details`.
 *
 * @example
 * const requests = servicesFromManifest(readFileSync('web.yaml', 'utf8'), 'web.yaml', serviceRequestSchema(limits));
 */
export function servicesFromManifest(text: string, file: string, schema: ReturnType<typeof serviceRequestSchema>): ServiceRequest[] {
  const problems: ManifestProblem[] = [];
  const requests: ServiceRequest[] = [];
  parseAllDocuments(text, { uniqueKeys: true }).forEach((doc, i) => {
    const document = i + 1;
    const problem = (path: string, message: string) => problems.push({ document, path, message });
    if (doc.errors.length > 0) return problem('(document)', `not YAML: ${doc.errors[0].message.split('\n')[0]}`);
    const value: unknown = doc.toJSON();
    if (value === null || value === undefined) return;
    if (!isObject(value)) return problem('(document)', 'must be a Service object');
    if (value.apiVersion !== 'v1' || value.kind !== 'Service') return problem('kind', `want apiVersion v1, kind Service; got ${String(value.apiVersion)} ${String(value.kind)}`);
    const metadata = isObject(value.metadata) ? value.metadata : {};
    const spec = isObject(value.spec) ? value.spec : {};
    const before = problems.length;
    for (const key of Object.keys(spec)) if (!SPEC_FIELDS.has(key)) problem(`spec.${key}`, 'not supported');
    if (spec.type === 'ExternalName') problem('spec.type', 'ExternalName services are not supported');
    if (spec.clusterIP === 'None') problem('spec.clusterIP', 'headless services (clusterIP None) are not supported');
    if (spec.clusterIPs !== undefined && !(Array.isArray(spec.clusterIPs) && spec.clusterIPs.length <= 1 && (spec.clusterIPs.length === 0 || spec.clusterIPs[0] === spec.clusterIP))) {
      problem('spec.clusterIPs', 'only one ClusterIP, the one spec.clusterIP names');
    }
    if (spec.internalTrafficPolicy !== undefined && spec.internalTrafficPolicy !== 'Cluster') problem('spec.internalTrafficPolicy', 'only Cluster is supported yet');
    if (spec.ipFamilies !== undefined && JSON.stringify(spec.ipFamilies) !== '["IPv4"]') problem('spec.ipFamilies', 'only [IPv4] is supported');
    const ports = spec.ports;
    if (Array.isArray(ports)) {
      ports.forEach((p: unknown, j) => {
        if (!isObject(p)) return;
        for (const key of Object.keys(p)) if (!PORT_FIELDS.has(key)) problem(`spec.ports[${j}].${key}`, 'not supported');
      });
    }
    if (problems.length > before) return;
    const body = {
      name: metadata.name,
      ...(metadata.namespace !== undefined ? { namespace: metadata.namespace } : {}),
      ...(metadata.labels !== undefined ? { labels: metadata.labels } : {}),
      ...(spec.type !== undefined ? { type: spec.type } : {}),
      ...(typeof spec.clusterIP === 'string' && spec.clusterIP !== '' ? { clusterIP: spec.clusterIP } : {}),
      ports: Array.isArray(ports) ? ports.map((p: unknown) => (isObject(p) ? Object.fromEntries(Object.entries(p).filter(([k]) => k !== 'appProtocol')) : p)) : ports,
      ...(spec.selector !== undefined ? { selector: spec.selector } : {}),
      ...(spec.externalIPs !== undefined ? { externalIPs: spec.externalIPs } : {}),
      ...(spec.loadBalancerIP !== undefined ? { loadBalancerIPs: [spec.loadBalancerIP] } : {}),
      ...(spec.sessionAffinity !== undefined ? { sessionAffinity: spec.sessionAffinity } : {}),
      ...(spec.sessionAffinityConfig !== undefined ? { sessionAffinityConfig: spec.sessionAffinityConfig } : {}),
      ...(spec.externalTrafficPolicy !== undefined ? { externalTrafficPolicy: spec.externalTrafficPolicy } : {}),
    };
    const parsed = schema.safeParse(body);
    if (!parsed.success) {
      for (const issue of parsed.error.issues) problem(manifestPath(issue.path), issue.message);
      return;
    }
    requests.push(parsed.data);
  });
  if (problems.length > 0) {
    const [first] = problems;
    const more = problems.length > 1 ? ` (and ${problems.length - 1} more problem${problems.length > 2 ? 's' : ''})` : '';
    throw new ServiceError('ERR_SERVICE_INVALID', `${file}: document ${first.document}: ${first.path}: ${first.message}${more}; nothing was created`, { details: { problems } });
  }
  if (requests.length === 0) throw new ServiceError('ERR_SERVICE_INVALID', `${file}: no Service in it`, { details: { problems: [] } });
  return requests;
}
