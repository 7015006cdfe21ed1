/**
 * Tetragon's policy modes (tracing-policy/mode.md): a policy in `monitor` mode runs every selector
 * and posts every event, but takes none of its enforcing actions (Sigkill, Signal, Override);
 * `enforce` (the default) takes them. A policy without enforcing actions is `monitor_only` and
 * cannot be set to enforce. The mode comes from `spec.options` (`policy-mode`), is overridden when
 * loading (`--mode`), and again at runtime (ConfigureTracingPolicy), each over the one before.
 *
 * Both engines compile a monitored selector as Post in the kernel and keep the action it stands
 * for, which its events name: the kernel never holds an enforcing action of a monitored policy,
 * so no race with a mode change can let one through.
 * @module
 */

import { isMap, isSeq, parseDocument } from 'yaml';

export type PolicyMode = 'enforce' | 'monitor';
/** What a loaded policy's mode is, as ListTracingPolicies says it. */
export type PolicyModeStatus = PolicyMode | 'monitor_only';

export const POLICY_MODES: readonly PolicyMode[] = ['enforce', 'monitor'];

/** The actions a monitored policy does not take, in either engine's names. */
const ENFORCING = new Set(['SIGKILL', 'SIGNAL', 'OVERRIDE']);

interface Problem {
  field: string;
  reason: string;
}

/**
 * `spec.options` (a list of `{name, value}`): `policy-mode` (enforce or monitor) is read; any other
 * option is refused by name, never ignored.
 */
export function readPolicyOptions(options: unknown, problems: Problem[]): { mode?: PolicyMode } {
  if (options === undefined || options === null) return {};
  if (!Array.isArray(options)) {
    problems.push({ field: 'spec.options', reason: 'want a list of {name, value}' });
    return {};
  }
  let mode: PolicyMode | undefined;
  options.forEach((option: unknown, i) => {
    const field = `spec.options[${i}]`;
    const entry = typeof option === 'object' && option !== null && !Array.isArray(option) ? (option as Record<string, unknown>) : undefined;
    if (entry === undefined || typeof entry.name !== 'string') return void problems.push({ field, reason: 'want {name, value}' });
    for (const key of Object.keys(entry)) if (key !== 'name' && key !== 'value') problems.push({ field: `${field}.${key}`, reason: 'unknown field' });
    if (entry.name !== 'policy-mode') return void problems.push({ field: `${field}.name`, reason: `${JSON.stringify(entry.name)}: not supported yet (policy-mode is)` });
    const value = typeof entry.value === 'string' ? entry.value.toLowerCase() : undefined;
    if (value !== 'enforce' && value !== 'monitor') return void problems.push({ field: `${field}.value`, reason: `${JSON.stringify(entry.value)}: want enforce or monitor` });
    mode = value;
  });
  return mode === undefined ? {} : { mode };
}

/**
 * The mode a policy is compiled for: loading's (`wanted`) over spec.options' policy-mode, enforce
 * by default; spec.options is checked either way (a malformed option refuses the policy).
 */
export function policyMode(options: unknown, wanted: PolicyMode | undefined, problems: Problem[]): PolicyMode {
  const fromSpec = readPolicyOptions(options, problems).mode;
  return wanted ?? fromSpec ?? 'enforce';
}

/**
 * A policy's hooks with their selectors as the kernel runs them in `mode` (a monitored enforcing
 * action is `post`, and `monitored` keeps it), and whether any selector enforces (if none, the
 * policy is monitor_only). For both engines: tracepoint hooks and socket rules.
 */
export function hooksInMode<H extends { selectors: { action: string }[] }>(hooks: H[], mode: PolicyMode, post: H['selectors'][number]['action']): { hooks: H[]; enforces: boolean } {
  const enforces = hooks.some((hook) => hook.selectors.some((selector) => ENFORCING.has(selector.action)));
  if (mode === 'enforce') return { hooks, enforces };
  const monitored = (selector: H['selectors'][number]) => (ENFORCING.has(selector.action) ? { ...selector, action: post, monitored: selector.action } : selector);
  return { hooks: hooks.map((hook) => ({ ...hook, selectors: hook.selectors.map(monitored) })), enforces };
}

/** The mode a policy shows: monitor_only when it has nothing to enforce. */
export function modeStatus(mode: PolicyMode, enforces: boolean): PolicyModeStatus {
  return enforces ? mode : 'monitor_only';
}

/**
 * The policy's YAML with `spec.options`' policy-mode set to `mode` (what `tetra tracingpolicy add
 * --mode` sends); the rest of the document, comments included, as it was.
 */
export function withPolicyMode(text: string, mode: PolicyMode): string {
  const doc = parseDocument(text);
  if (doc.errors.length > 0 || !isMap(doc.contents)) return text; // refused with its reasons when loaded
  const options = doc.getIn(['spec', 'options']);
  const kept = isSeq(options) ? options.items.filter((item) => !(isMap(item) && item.get('name') === 'policy-mode')) : [];
  doc.setIn(['spec', 'options'], doc.createNode([...kept, { name: 'policy-mode', value: mode }]));
  return doc.toString();
}
