/**
 * A strict parser of the Prometheus text exposition format (0.0.4), for tests: anything a
 * Prometheus server would refuse or misread — a malformed line, a sample before its family's
 * TYPE, a family split in two, a label set twice, a negative counter — throws, naming the line.
 * @module
 */

export type MetricType = 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped';

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface MetricFamily {
  name: string;
  type: MetricType;
  help?: string;
  samples: Sample[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES = new Set<string>(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

function parseValue(text: string, where: string): number {
  if (text === 'NaN') return NaN;
  if (text === '+Inf' || text === 'Inf') return Infinity;
  if (text === '-Inf') return -Infinity;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) throw new Error(`${where}: "${text}" is not a sample value`);
  return Number(text);
}

/** The family a sample belongs to: histogram and summary samples carry suffixes. */
function familyOf(name: string, families: ReadonlyMap<string, MetricFamily>): string {
  if (families.has(name)) return name;
  for (const suffix of ['_bucket', '_sum', '_count']) {
    const base = name.slice(0, -suffix.length);
    if (name.endsWith(suffix) && ['histogram', 'summary'].includes(families.get(base)?.type ?? '')) return base;
  }
  return name;
}

function parseLabels(text: string, where: string): { labels: Record<string, string>; rest: string } {
  const labels: Record<string, string> = {};
  let i = 0;
  for (;;) {
    while (text[i] === ' ') i++;
    if (text[i] === '}') return { labels, rest: text.slice(i + 1) };
    const eq = text.indexOf('=', i);
    if (eq < 0) throw new Error(`${where}: label without "="`);
    const name = text.slice(i, eq).trim();
    if (!LABEL_NAME.test(name)) throw new Error(`${where}: "${name}" is not a label name`);
    if (name in labels) throw new Error(`${where}: label ${name} twice`);
    if (text[eq + 1] !== '"') throw new Error(`${where}: label ${name}'s value is not quoted`);
    let value = '';
    let j = eq + 2;
    for (;; j++) {
      const c = text[j];
      if (c === undefined) throw new Error(`${where}: label ${name}'s value is not closed`);
      if (c === '"') break;
      if (c === '\\') {
        const next = text[++j];
        if (next === 'n') value += '\n';
        else if (next === '\\' || next === '"') value += next;
        else throw new Error(`${where}: bad escape \\${next} in label ${name}`);
      } else value += c;
    }
    labels[name] = value;
    i = j + 1;
    if (text[i] === ',') i++;
    else if (text[i] !== '}') throw new Error(`${where}: want "," or "}" after label ${name}`);
  }
}

/** Parses a whole scrape into its families, by name. */
export function parsePrometheusText(text: string): Map<string, MetricFamily> {
  const families = new Map<string, MetricFamily>();
  const seenLabelSets = new Set<string>();
  const closed = new Set<string>();
  let current: string | undefined;
  if (text.length > 0 && !text.endsWith('\n')) throw new Error('the text does not end with a newline');
  const lines = text.split('\n').slice(0, -1);
  lines.forEach((line, index) => {
    const where = `line ${index + 1} (${JSON.stringify(line)})`;
    if (line.trim() === '') return;
    const enter = (name: string) => {
      if (current === name) return;
      if (closed.has(name)) throw new Error(`${where}: family ${name} appears again after other families`);
      if (current) closed.add(current);
      current = name;
    };
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+)(?: (.*))?$/.exec(line);
      if (!m) return; // a plain comment
      const [, keyword, name, rest = ''] = m;
      if (!METRIC_NAME.test(name)) throw new Error(`${where}: "${name}" is not a metric name`);
      enter(name);
      const family = families.get(name) ?? { name, type: 'untyped' as MetricType, samples: [] };
      families.set(name, family);
      if (keyword === 'TYPE') {
        if (!TYPES.has(rest)) throw new Error(`${where}: unknown type "${rest}"`);
        if (family.samples.length > 0) throw new Error(`${where}: TYPE after samples of ${name}`);
        family.type = rest as MetricType;
      } else {
        if (family.help !== undefined) throw new Error(`${where}: second HELP for ${name}`);
        family.help = rest;
      }
      return;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(.*)$/.exec(line);
    if (!m) throw new Error(`${where}: not a sample`);
    const name = m[1];
    let rest = m[2];
    let labels: Record<string, string> = {};
    if (rest.startsWith('{')) ({ labels, rest } = parseLabels(rest.slice(1), where));
    const fields = rest.trim().split(/\s+/);
    if (rest[0] !== ' ' || fields.length < 1 || fields.length > 2) throw new Error(`${where}: want a value and an optional timestamp`);
    const value = parseValue(fields[0], where);
    if (fields[1] !== undefined && !/^-?\d+$/.test(fields[1])) throw new Error(`${where}: "${fields[1]}" is not a timestamp`);
    const familyName = familyOf(name, families);
    enter(familyName);
    const family = families.get(familyName) ?? { name: familyName, type: 'untyped' as MetricType, samples: [] };
    families.set(familyName, family);
    const id = `${name}${JSON.stringify(Object.entries(labels).sort(([a], [b]) => a.localeCompare(b)))}`;
    if (seenLabelSets.has(id)) throw new Error(`${where}: ${name} with these labels twice`);
    seenLabelSets.add(id);
    if (family.type === 'counter' && !(value >= 0)) throw new Error(`${where}: counter ${name} is ${value}`);
    family.samples.push({ name, labels, value });
  });
  return families;
}

/** The value of the sample of `name` whose labels are exactly `labels`; undefined when there is none. */
export function sampleValue(families: ReadonlyMap<string, MetricFamily>, name: string, labels: Record<string, string> = {}): number | undefined {
  const family = families.get(familyOf(name, families));
  const want = Object.entries(labels).sort(([a], [b]) => a.localeCompare(b));
  const sample = family?.samples.find((s) => s.name === name && JSON.stringify(Object.entries(s.labels).sort(([a], [b]) => a.localeCompare(b))) === JSON.stringify(want));
  return sample?.value;
}
