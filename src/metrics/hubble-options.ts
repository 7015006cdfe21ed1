/**
 * The `--hubble-metrics` setting as Cilium writes it: one entry per metric, each a name with
 * optional `;`-separated options, e.g. `flow:sourceContext=namespace;destinationContext=namespace`.
 * A context option may list alternatives with `|`, the first that has a value winning
 * (`sourceContext=pod|identity`).
 * @module
 */
import { z } from 'zod';

/** The metrics this agent implements, by the names `--hubble-metrics` takes. */
export const HUBBLE_METRIC_NAMES = ['flow', 'drop', 'tcp', 'policy', 'port-distribution', 'httpV2', 'dns'] as const;
export type HubbleMetricName = (typeof HUBBLE_METRIC_NAMES)[number];

/** What a source or destination label may show (Cilium's context options that these flows carry). */
export const CONTEXT_KINDS = ['namespace', 'pod', 'pod-name', 'workload', 'workload-name', 'identity', 'reserved-identity'] as const;
export type ContextKind = (typeof CONTEXT_KINDS)[number];

export interface HubbleMetricOptions {
  name: HubbleMetricName;
  /** Alternatives for the `source` label, in order; empty: no such label. */
  sourceContext: ContextKind[];
  destinationContext: ContextKind[];
}

const OPTIONS = ['sourceContext', 'destinationContext'] as const;

/** Parses one entry; returns the reason it is wrong as a string. */
export function parseHubbleMetric(entry: string): HubbleMetricOptions | string {
  const colon = entry.indexOf(':');
  const name = colon < 0 ? entry : entry.slice(0, colon);
  if (!(HUBBLE_METRIC_NAMES as readonly string[]).includes(name)) return `"${entry}": unknown metric "${name}" (known: ${HUBBLE_METRIC_NAMES.join(', ')})`;
  const parsed: HubbleMetricOptions = { name: name as HubbleMetricName, sourceContext: [], destinationContext: [] };
  if (colon < 0) return parsed;
  for (const option of entry.slice(colon + 1).split(';').filter(Boolean)) {
    const eq = option.indexOf('=');
    const key = option.slice(0, eq);
    if (eq <= 0 || !(OPTIONS as readonly string[]).includes(key)) return `"${entry}": unknown option "${option}" (known: ${OPTIONS.join(', ')}, each =kind|kind…)`;
    const kinds = option.slice(eq + 1).split('|');
    const unknown = kinds.find((k) => !(CONTEXT_KINDS as readonly string[]).includes(k));
    if (unknown !== undefined) return `"${entry}": ${key} "${unknown}" is not one of ${CONTEXT_KINDS.join(', ')}`;
    parsed[key as (typeof OPTIONS)[number]] = kinds as ContextKind[];
  }
  return parsed;
}

/** Parses the whole setting; a metric listed twice is an error, as its two label sets could not coexist. */
export function parseHubbleMetrics(entries: readonly string[]): HubbleMetricOptions[] | string {
  const out: HubbleMetricOptions[] = [];
  for (const entry of entries) {
    const parsed = parseHubbleMetric(entry);
    if (typeof parsed === 'string') return parsed;
    if (out.some((o) => o.name === parsed.name)) return `"${entry}": metric ${parsed.name} is listed twice`;
    out.push(parsed);
  }
  return out;
}

/** The config field: a list of entries, refused whole (naming the entry) if one is wrong. */
export function hubbleMetricsSetting(fallback: readonly string[]) {
  return z
    .array(z.string().min(1))
    .superRefine((entries, ctx) => {
      const parsed = parseHubbleMetrics(entries);
      if (typeof parsed === 'string') ctx.addIssue({ code: 'custom', message: parsed });
    })
    .default([...fallback]);
}
