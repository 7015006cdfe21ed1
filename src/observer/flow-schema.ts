/**
 * flow.proto's own description of Flow and FlowFilter, read at run time, for what an operator
 * writes by hand: FlowFilters as JSON (Cilium's `--hubble-export-allowlist '{"verdict":["DROPPED"]}'`,
 * proto or lowerCamelCase names as protojson takes them) and field masks over Flow
 * (`time source.identity verdict`). Both are checked against the .proto, so an unknown name is
 * refused at load time, naming it, rather than silently matching or keeping nothing.
 * @module
 */
import * as protoLoader from '@grpc/proto-loader';
import { InvalidRequestError } from './errors.ts';
import { PROTO_DIR } from './proto.ts';
import type { Flow, FlowFilter } from './types.ts';

interface FieldDescriptor {
  name: string;
  label: string;
  type: string;
  typeName: string;
}
interface MessageDescriptor {
  field: FieldDescriptor[];
}

let messages: Map<string, MessageDescriptor> | undefined;

/** flow.proto's messages by full name, with fields under their proto names (keepCase). */
function messageTypes(): Map<string, MessageDescriptor> {
  if (!messages) {
    const definition = protoLoader.loadSync(['flow/flow.proto'], { keepCase: true, includeDirs: [PROTO_DIR] });
    messages = new Map();
    for (const [name, value] of Object.entries(definition)) {
      const type = (value as { type?: unknown }).type as MessageDescriptor | undefined;
      if (type && Array.isArray(type.field)) messages.set(name, type);
    }
  }
  return messages;
}

function message(typeName: string): MessageDescriptor | undefined {
  return messageTypes().get(`flow.${typeName}`) ?? messageTypes().get(typeName);
}

/** protobufjs's lowerCamelCase of a proto field name: the key the plain objects of types.ts use. */
function camel(name: string): string {
  return name.slice(0, 1) + name.slice(1).replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
}

function fieldOf(type: MessageDescriptor, key: string): FieldDescriptor | undefined {
  return type.field.find((f) => f.name === key) ?? type.field.find((f) => camel(f.name) === key);
}

function scalarOk(field: FieldDescriptor, value: unknown): boolean {
  switch (field.type) {
    case 'TYPE_STRING':
      return typeof value === 'string';
    case 'TYPE_BOOL':
      return typeof value === 'boolean';
    case 'TYPE_ENUM':
      return typeof value === 'string' || (typeof value === 'number' && Number.isInteger(value));
    default:
      return typeof value === 'number' && Number.isInteger(value) && value >= 0;
  }
}

/** A JSON object as the message `typeName`, keys renamed to lowerCamelCase, types checked. */
function fromJson(typeName: string, value: unknown, path: string): Record<string, unknown> {
  const type = message(typeName);
  if (!type) throw new InvalidRequestError('ERR_OBSERVER_INVALID_FILTER', path, `no message ${typeName} in flow.proto`);
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new InvalidRequestError('ERR_OBSERVER_INVALID_FILTER', path, `expected a JSON object, got ${JSON.stringify(value)}`);
  const out: Record<string, unknown> = {};
  for (const [key, raw] of Object.entries(value)) {
    const field = fieldOf(type, key);
    if (!field) throw new InvalidRequestError('ERR_OBSERVER_INVALID_FILTER', `${path}.${key}`, `unknown field of ${typeName}`);
    const at = `${path}.${field.name}`;
    const one = (v: unknown, p: string): unknown => {
      if (field.type === 'TYPE_MESSAGE') return fromJson(field.typeName, v, p);
      if (!scalarOk(field, v)) throw new InvalidRequestError('ERR_OBSERVER_INVALID_FILTER', p, `expected ${field.type.slice(5).toLowerCase()}, got ${JSON.stringify(v)}`);
      return v;
    };
    if (field.label === 'LABEL_REPEATED') {
      if (!Array.isArray(raw)) throw new InvalidRequestError('ERR_OBSERVER_INVALID_FILTER', at, `expected a list, got ${JSON.stringify(raw)}`);
      out[camel(field.name)] = raw.map((v, i) => one(v, `${at}[${i}]`));
    } else {
      out[camel(field.name)] = one(raw, at);
    }
  }
  return out;
}

/** One FlowFilter from its JSON object form (proto or lowerCamelCase names). Values are checked when compiled. */
export function flowFilterFromJson(value: unknown, path: string): FlowFilter {
  return fromJson('FlowFilter', value, path) as FlowFilter;
}

/**
 * FlowFilters as Cilium's exporter flags take them: JSON objects one after the other
 * (`{"verdict":["DROPPED"]} {"source_pod":["kube-system/"]}`), or a JSON list of them; empty
 * text is no filter.
 *
 * @example
 * parseFlowFilters('{"verdict":["DROPPED"]}', 'hubbleExportAllowlist'); // [{ verdict: ['DROPPED'] }]
 */
export function parseFlowFilters(text: string, path: string): FlowFilter[] {
  const values: unknown[] = [];
  let depth = 0;
  let start = -1;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
      continue;
    }
    if (c === '"') inString = true;
    else if (c === '{' || c === '[') {
      if (depth++ === 0) start = i;
    } else if (c === '}' || c === ']') {
      if (--depth === 0) {
        const chunk = text.slice(start, i + 1);
        let parsed: unknown;
        try {
          parsed = JSON.parse(chunk);
        } catch (error) {
          throw new InvalidRequestError('ERR_OBSERVER_INVALID_FILTER', path, `not JSON: ${(error as Error).message}`);
        }
        if (Array.isArray(parsed)) values.push(...parsed);
        else values.push(parsed);
      } else if (depth < 0) {
        throw new InvalidRequestError('ERR_OBSERVER_INVALID_FILTER', path, `not JSON: unbalanced ${c} at offset ${i}`);
      }
    } else if (depth === 0 && !/[\s,]/.test(c)) {
      throw new InvalidRequestError('ERR_OBSERVER_INVALID_FILTER', path, `not JSON: expected a FlowFilter object at offset ${i}, found ${JSON.stringify(c)}`);
    }
  }
  if (depth !== 0 || inString) throw new InvalidRequestError('ERR_OBSERVER_INVALID_FILTER', path, 'not JSON: unterminated object');
  return values.map((v, i) => flowFilterFromJson(v, `${path}[${i}]`));
}

/** A field mask as a tree of lowerCamelCase keys; `true` keeps the whole field. */
type MaskNode = Map<string, MaskNode | true>;

/**
 * Keeps only the listed paths of a Flow, as protobuf's FieldMask does (Cilium's
 * `--hubble-export-fieldmask`). Paths use proto names (`source.pod_name`, `l4.TCP.flags`).
 */
export class FieldMask {
  readonly paths: readonly string[];
  readonly #root: MaskNode;

  private constructor(paths: readonly string[], root: MaskNode) {
    this.paths = paths;
    this.#root = root;
  }

  /**
   * @throws InvalidRequestError (ERR_OBSERVER_INVALID_FIELD_MASK) naming the path and the segment
   * that flow.Flow does not have.
   * @example
   * FieldMask.compile(['time', 'source.identity', 'verdict'], 'hubbleExportFieldmask').apply(flow);
   */
  static compile(paths: readonly string[], field: string): FieldMask {
    const root: MaskNode = new Map();
    paths.forEach((path, i) => {
      const at = `${field}[${i}]`;
      let type: MessageDescriptor | undefined = message('Flow');
      let typeName = 'flow.Flow';
      let node = root;
      const segments = path.split('.');
      segments.forEach((segment, depth) => {
        const bad = (reason: string): never => {
          throw new InvalidRequestError('ERR_OBSERVER_INVALID_FIELD_MASK', at, `${JSON.stringify(path)}: ${reason}`);
        };
        if (!type) return bad(`cannot select inside ${typeName}`);
        const f = type.field.find((x) => x.name === segment);
        if (!f) return bad(`${typeName} has no field ${JSON.stringify(segment)}`);
        const key = camel(f.name);
        if (depth === segments.length - 1) {
          node.set(key, true);
          return;
        }
        // Protobuf's rule: a repeated field, a scalar or a well-known type ends a path.
        if (f.label === 'LABEL_REPEATED' || f.type !== 'TYPE_MESSAGE' || f.typeName.startsWith('google.protobuf.')) {
          type = undefined;
          typeName = `${segment} (${f.label === 'LABEL_REPEATED' ? 'repeated' : f.typeName || f.type.slice(5).toLowerCase()})`;
        } else {
          type = message(f.typeName);
          typeName = f.typeName;
        }
        const existing = node.get(key);
        if (existing === true) return;
        const next: MaskNode = existing ?? new Map();
        node.set(key, next);
        node = next;
      });
    });
    return new FieldMask([...paths], root);
  }

  get active(): boolean {
    return this.#root.size > 0;
  }

  /** A copy of `flow` with only the masked fields (the flow itself is shared with the buffer: untouched). */
  apply(flow: Flow): Flow {
    return this.active ? (pick(flow as Record<string, unknown>, this.#root) as Flow) : flow;
  }
}

function pick(value: Record<string, unknown>, node: MaskNode): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, sub] of node) {
    const v = value[key];
    if (v === undefined) continue;
    if (sub === true) out[key] = v;
    else if (typeof v === 'object' && v !== null) {
      const inner = pick(v as Record<string, unknown>, sub);
      if (Object.keys(inner).length > 0) out[key] = inner;
    }
  }
  return out;
}
