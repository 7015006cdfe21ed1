/**
 * TracingPolicy and TracingPolicyNamespaced (`cilium.io/v1alpha1`) as a client hands them to
 * AddTracingPolicy: parsed and checked whole, every problem named by its field, before anything is
 * loaded. Hooks this kernel lacks are refused as the issue asks ("needs kprobes (or fentry/LSM);
 * this kernel has none"), never ignored; what the kernel has but Ciliate does not load yet
 * (tracepoints, syscall hooks from syscall tracepoints, uprobes) is refused as unsupported, so a
 * policy is never half-applied.
 * @module
 */
import { existsSync } from 'node:fs';
import { parse } from 'yaml';
import { probeFeature } from '../ebpf/index.ts';
import { RuntimeError } from './errors.ts';

export interface PolicyProblem {
  field: string;
  reason: string;
}

export interface TracingPolicyHeader {
  kind: 'TracingPolicy' | 'TracingPolicyNamespaced';
  name: string;
  namespace?: string;
}

const KINDS = new Set(['TracingPolicy', 'TracingPolicyNamespaced']);
const SPEC_FIELDS = new Set(['kprobes', 'tracepoints', 'uprobes', 'lsmhooks', 'usdts', 'fentries', 'loader', 'podSelector', 'containerSelector', 'hostSelector', 'nodeSelector', 'lists', 'enforcers', 'options', 'selectorsMacros']);
const KPROBE_FIELDS = new Set(['call', 'syscall', 'return', 'args', 'data', 'returnArg', 'returnArgAction', 'selectors', 'message', 'tags', 'ignore']);
const TRACEPOINT_FIELDS = new Set(['subsystem', 'event', 'raw', 'args', 'selectors', 'message', 'tags']);
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
/** What a hook this kernel lacks is refused with (issue 12's wording). */
export const MISSING_HOOK_REASON = 'needs kprobes (or fentry/LSM); this kernel has none';

type Json = Record<string, unknown>;
const isMap = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Whether the kernel can attach `feature` (a `ciliate bpf features` name), cached per process. */
const supported = new Map<string, boolean>();
function kernelHas(feature: string): boolean {
  let has = supported.get(feature);
  if (has === undefined) {
    has = probeFeature(feature).status === 'supported';
    supported.set(feature, has);
  }
  return has;
}

function tracefsEvent(subsystem: string, event: string): boolean {
  return ['/sys/kernel/tracing', '/sys/kernel/debug/tracing'].some((root) => existsSync(`${root}/events/${subsystem}/${event}`));
}

function checkList(spec: Json, key: string, problems: PolicyProblem[], each: (item: Json, field: string) => void): void {
  const list = spec[key];
  if (list === undefined || list === null) return;
  if (!Array.isArray(list)) return void problems.push({ field: `spec.${key}`, reason: 'want a list' });
  list.forEach((item, i) => {
    const field = `spec.${key}[${i}]`;
    if (!isMap(item)) problems.push({ field, reason: 'want an object' });
    else each(item, field);
  });
}

function unknownFields(item: Json, known: Set<string>, field: string, problems: PolicyProblem[]): void {
  for (const key of Object.keys(item)) if (!known.has(key)) problems.push({ field: `${field}.${key}`, reason: 'unknown field' });
}

export interface CheckedTracingPolicy {
  header: TracingPolicyHeader;
  /** Hooks the kernel has but Ciliate does not load yet, each naming its field. */
  unsupported: string[];
}

/**
 * Checks a policy document whole. Throws RuntimeError ERR_RUNTIME_POLICY (details: every problem,
 * by field) for a malformed policy or one needing hooks this kernel lacks.
 *
 * @example
 * const { header, unsupported } = checkTracingPolicy(readFileSync('file_monitoring.yaml', 'utf8'));
 */
export function checkTracingPolicy(text: string): CheckedTracingPolicy {
  let doc: unknown;
  try {
    doc = parse(text);
  } catch (error) {
    throw new RuntimeError('ERR_RUNTIME_POLICY', `tracing policy: not YAML: ${(error as Error).message}`);
  }
  const problems: PolicyProblem[] = [];
  if (!isMap(doc)) throw new RuntimeError('ERR_RUNTIME_POLICY', 'tracing policy: want a YAML object', { details: [{ field: '', reason: 'want an object' }] });
  if (doc.apiVersion !== 'cilium.io/v1alpha1') problems.push({ field: 'apiVersion', reason: `want cilium.io/v1alpha1, got ${JSON.stringify(doc.apiVersion)}` });
  if (!KINDS.has(doc.kind as string)) problems.push({ field: 'kind', reason: `want TracingPolicy or TracingPolicyNamespaced, got ${JSON.stringify(doc.kind)}` });
  const metadata = isMap(doc.metadata) ? doc.metadata : {};
  const name = typeof metadata.name === 'string' ? metadata.name : '';
  if (!DNS_SUBDOMAIN.test(name) || name.length > 253) problems.push({ field: 'metadata.name', reason: `want a DNS subdomain, got ${JSON.stringify(metadata.name)}` });
  const spec = doc.spec;
  const unsupported: string[] = [];
  if (!isMap(spec)) {
    problems.push({ field: 'spec', reason: 'want an object' });
  } else {
    unknownFields(spec, SPEC_FIELDS, 'spec', problems);
    checkList(spec, 'kprobes', problems, (kprobe, field) => {
      unknownFields(kprobe, KPROBE_FIELDS, field, problems);
      if (typeof kprobe.call !== 'string' || !kprobe.call) return void problems.push({ field: `${field}.call`, reason: 'want the function to hook' });
      const syscall = kprobe.syscall === true || /^(__x64_|__arm64_)?sys_/.test(kprobe.call);
      if (syscall) unsupported.push(`${field} (${kprobe.call}): syscall hooks from syscall tracepoints are not loaded yet`);
      else if (!kernelHas('kprobes')) problems.push({ field: `${field}.call`, reason: `${JSON.stringify(kprobe.call)} ${MISSING_HOOK_REASON}` });
      else unsupported.push(`${field} (${kprobe.call}): kprobes are not loaded yet`);
    });
    checkList(spec, 'fentries', problems, (_fentry, field) => {
      if (!kernelHas('fentry')) problems.push({ field, reason: MISSING_HOOK_REASON });
      else unsupported.push(`${field}: fentries are not loaded yet`);
    });
    checkList(spec, 'lsmhooks', problems, (_hook, field) => {
      if (!kernelHas('bpf_lsm')) problems.push({ field, reason: MISSING_HOOK_REASON });
      else unsupported.push(`${field}: LSM hooks are not loaded yet`);
    });
    checkList(spec, 'tracepoints', problems, (tracepoint, field) => {
      unknownFields(tracepoint, TRACEPOINT_FIELDS, field, problems);
      const { subsystem, event } = tracepoint;
      if (typeof subsystem !== 'string' || typeof event !== 'string' || !subsystem || !event) return void problems.push({ field, reason: 'want subsystem and event' });
      if (!/^\w+$/.test(subsystem) || !/^\w+$/.test(event) || !tracefsEvent(subsystem, event)) return void problems.push({ field, reason: `no tracepoint ${subsystem}/${event} in this kernel` });
      unsupported.push(`${field} (${subsystem}/${event}): tracepoint hooks are not loaded yet`);
    });
    for (const key of ['uprobes', 'usdts']) checkList(spec, key, problems, (_item, field) => unsupported.push(`${field}: ${key} are not loaded yet`));
  }
  if (problems.length > 0) {
    throw new RuntimeError('ERR_RUNTIME_POLICY', `tracing policy ${name || '(unnamed)'}: ${problems.map((p) => `${p.field}: ${p.reason}`).join('; ')}`, { details: problems });
  }
  return { header: { kind: doc.kind as TracingPolicyHeader['kind'], name, namespace: typeof metadata.namespace === 'string' ? metadata.namespace : undefined }, unsupported };
}
