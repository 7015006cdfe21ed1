/**
 * Tetragon's gRPC API, `tetragon.FineGuidanceSensors`, over the runtime observer: GetEvents (a
 * server stream with allow/deny filters and field filters), GetHealth (what `tetra status`
 * prints), GetVersion and ListTracingPolicies. The .proto files in ./proto were written for
 * Ciliate from Tetragon's published names and numbers and are loaded at run time, as the Hubble
 * API's are. Events are built once in their JSON form (types.ts) and converted to the wire form
 * per stream; a stock `tetra` decodes them.
 * @module
 */
import { once } from 'node:events';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { cancellableStream, GrpcListeners, unaryCall } from '../grpc/index.ts';
import type { PolicyMode, PolicyModeStatus } from './policy-mode.ts';
import { RuntimeError } from './errors.ts';
import { loopbackPeerUid } from './peer.ts';
import { compileFilters, type EventFilter } from './filter.ts';
import { protoTimestamp, type RuntimeObserver } from './runtime-observer.ts';
import { EventType, eventBody, eventTypeOf, type EventTypeName, type TetragonAction, type TetragonArg, type TetragonEvent, type TetragonProcess, type TetragonProcessKprobe, type TetragonProcessTracepoint } from './types.ts';

export const TETRAGON_PROTO_DIR = join(import.meta.dirname, 'proto');

/** Tetragon's default --server-address. */
export const TETRAGON_DEFAULT_ADDRESS = 'localhost:54321';

/** Proto field names kept (they are the JSON export's), enums by name, 64-bit numbers as strings. */
const LOADER_OPTIONS: protoLoader.Options = { keepCase: true, longs: String, enums: String, defaults: false, oneofs: true, includeDirs: [TETRAGON_PROTO_DIR] };

let definition: protoLoader.PackageDefinition | undefined;
const MODE_TO_PROTO: Record<PolicyModeStatus, string> = { enforce: 'TP_MODE_ENFORCE', monitor: 'TP_MODE_MONITOR', monitor_only: 'TP_MODE_MONITOR_ONLY' };
const MODE_FROM_PROTO: Record<string, PolicyMode> = { TP_MODE_ENFORCE: 'enforce', TP_MODE_MONITOR: 'monitor' };

function packageDefinition(): protoLoader.PackageDefinition {
  definition ??= protoLoader.loadSync(['tetragon/sensors.proto'], LOADER_OPTIONS);
  return definition;
}

/** Events a stream may have waiting for a slow client before it drops (and counts) new ones. */
const STREAM_QUEUE_LIMIT = 8192;

// ---- JSON form <-> wire form ----

interface WireTimestamp {
  seconds: string | number;
  nanos?: number;
}

function toWireTime(time: string | undefined): WireTimestamp | undefined {
  if (!time) return undefined;
  const match = /^(.*?)(?:\.(\d{1,9}))?Z$/.exec(time);
  if (!match) return undefined;
  const seconds = Math.floor(Date.parse(`${match[1]}Z`) / 1000);
  const nanos = match[2] ? Number(match[2].padEnd(9, '0')) : 0;
  return { seconds: String(seconds), nanos };
}

function fromWireTime(time: WireTimestamp | undefined): string | undefined {
  if (!time) return undefined;
  return protoTimestamp(BigInt(time.seconds) * 1_000_000_000n + BigInt(time.nanos ?? 0));
}

const wrap = (value: number | undefined) => (value === undefined ? undefined : { value });
const unwrap = (value: { value?: number } | undefined) => (value === undefined ? undefined : (value.value ?? 0));

type WireProcess = Record<string, unknown>;

function toWireProcess(p: TetragonProcess | undefined): WireProcess | undefined {
  if (!p) return undefined;
  const container = p.pod?.container;
  return {
    ...p,
    pid: wrap(p.pid),
    uid: wrap(p.uid),
    auid: wrap(p.auid),
    tid: wrap(p.tid),
    start_time: toWireTime(p.start_time),
    pod: p.pod && { ...p.pod, container: container && { ...container, start_time: toWireTime(container.start_time), pid: wrap(container.pid) } },
  };
}

function fromWireProcess(w: WireProcess | undefined): TetragonProcess | undefined {
  if (!w) return undefined;
  const pod = w.pod as (TetragonProcess['pod'] & { container?: Record<string, unknown> }) | undefined;
  const container = pod?.container;
  return {
    ...(w as unknown as TetragonProcess),
    pid: unwrap(w.pid as { value?: number }) ?? 0,
    uid: unwrap(w.uid as { value?: number }) ?? 0,
    auid: unwrap(w.auid as { value?: number }) ?? 0,
    tid: unwrap(w.tid as { value?: number }) ?? 0,
    start_time: fromWireTime(w.start_time as WireTimestamp) ?? '',
    pod: pod && {
      ...pod,
      container: container && { ...container, start_time: fromWireTime(container.start_time as unknown as WireTimestamp), pid: unwrap(container.pid as unknown as { value?: number }) },
    },
  };
}

/** JSON bytes_arg is base64 (protojson); the wire takes the bytes. */
const toWireArg = (arg: TetragonArg) => ('bytes_arg' in arg ? { ...arg, bytes_arg: Buffer.from(arg.bytes_arg, 'base64') } : arg);
function fromWireArg(wire: Record<string, unknown>): TetragonArg {
  const label = wire.label ? { label: wire.label as string } : {};
  const key = wire.arg as string;
  const value = wire[key];
  if (key === 'bytes_arg') return { bytes_arg: Buffer.from(value as Uint8Array).toString('base64'), ...label };
  return { [key]: value, ...label } as TetragonArg;
}

/** An event in the wire form grpc-js serializes. */
export function toWireEvent(event: TetragonEvent): Record<string, unknown> {
  const base = { node_name: event.node_name, time: toWireTime(event.time) };
  if ('process_exec' in event) {
    const e = event.process_exec;
    return { ...base, process_exec: { process: toWireProcess(e.process), parent: toWireProcess(e.parent), ancestors: e.ancestors?.map(toWireProcess) } };
  }
  if ('process_kprobe' in event) {
    const e = event.process_kprobe;
    return { ...base, process_kprobe: { ...e, process: toWireProcess(e.process), parent: toWireProcess(e.parent), args: e.args?.map(toWireArg) } };
  }
  if ('process_tracepoint' in event) {
    const e = event.process_tracepoint;
    return { ...base, process_tracepoint: { ...e, process: toWireProcess(e.process), parent: toWireProcess(e.parent), args: e.args?.map(toWireArg) } };
  }
  const e = event.process_exit;
  return { ...base, process_exit: { ...e, process: toWireProcess(e.process), parent: toWireProcess(e.parent), time: toWireTime(e.time) } };
}

/** A received event back in its JSON form (what `tetra getevents -o json` prints). */
export function fromWireEvent(wire: Record<string, unknown>): TetragonEvent | undefined {
  const base = { node_name: String(wire.node_name ?? ''), time: fromWireTime(wire.time as WireTimestamp) ?? '' };
  const exec = wire.process_exec as Record<string, unknown> | undefined;
  if (exec) {
    const ancestors = (exec.ancestors as WireProcess[] | undefined)?.map((a) => fromWireProcess(a)!);
    return { ...base, process_exec: { process: fromWireProcess(exec.process as WireProcess)!, parent: fromWireProcess(exec.parent as WireProcess), ancestors: ancestors?.length ? ancestors : undefined } };
  }
  for (const key of ['process_kprobe', 'process_tracepoint'] as const) {
    const hook = wire[key] as Record<string, unknown> | undefined;
    if (!hook) continue;
    const args = (hook.args as Record<string, unknown>[] | undefined)?.map(fromWireArg);
    const body = {
      ...hook,
      process: fromWireProcess(hook.process as WireProcess)!,
      parent: fromWireProcess(hook.parent as WireProcess),
      args: args?.length ? args : undefined,
      action: (hook.action as TetragonAction | undefined) ?? 'KPROBE_ACTION_POST',
      policy_name: (hook.policy_name as string | undefined) ?? '',
    };
    return key === 'process_kprobe' ? { ...base, process_kprobe: body as TetragonProcessKprobe } : { ...base, process_tracepoint: body as TetragonProcessTracepoint };
  }
  const exit = wire.process_exit as Record<string, unknown> | undefined;
  if (exit) {
    return {
      ...base,
      process_exit: {
        process: fromWireProcess(exit.process as WireProcess)!,
        parent: fromWireProcess(exit.parent as WireProcess),
        signal: (exit.signal as string) || undefined,
        status: (exit.status as number) || undefined,
        time: fromWireTime(exit.time as WireTimestamp),
      },
    };
  }
  return undefined;
}

// ---- field filters ----

export interface FieldFilterRequest {
  event_set?: (EventTypeName | number)[];
  fields?: { paths?: string[] };
  action?: 'INCLUDE' | 'EXCLUDE' | number;
  invert_event_set?: { value?: boolean };
}

type FieldTree = Map<string, FieldTree | true>;

function fieldTree(paths: string[]): FieldTree {
  const root: FieldTree = new Map();
  for (const path of paths) {
    const segments = path.split('.').filter(Boolean);
    let node = root;
    segments.forEach((segment, i) => {
      if (i === segments.length - 1) return void node.set(segment, true);
      let next = node.get(segment);
      if (next === true) return;
      if (!next) node.set(segment, (next = new Map()));
      node = next;
    });
  }
  return root;
}

function include(value: Record<string, unknown>, tree: FieldTree): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, sub] of tree) {
    const v = value[key];
    if (v === undefined) continue;
    out[key] = sub === true || typeof v !== 'object' || v === null || Array.isArray(v) ? v : include(v as Record<string, unknown>, sub);
  }
  return out;
}

function exclude(value: Record<string, unknown>, tree: FieldTree): Record<string, unknown> {
  const out: Record<string, unknown> = { ...value };
  for (const [key, sub] of tree) {
    if (sub === true) delete out[key];
    else if (out[key] && typeof out[key] === 'object' && !Array.isArray(out[key])) out[key] = exclude(out[key] as Record<string, unknown>, sub);
  }
  return out;
}

/** Tetragon's field filters: paths inside the event (`process.binary`, `parent.exec_id`). */
export function compileFieldFilters(filters: FieldFilterRequest[] = []): (event: TetragonEvent) => TetragonEvent {
  const compiled = filters.map((f) => {
    const types = new Set((f.event_set ?? []).map((t) => (typeof t === 'number' ? t : EventType[t])));
    const invert = f.invert_event_set?.value === true;
    const tree = fieldTree(f.fields?.paths ?? []);
    const action = f.action === 'EXCLUDE' || f.action === 1 ? exclude : include;
    return { applies: (e: TetragonEvent) => (types.size === 0 || types.has(EventType[eventTypeOf(e)])) !== invert, tree, action };
  });
  if (compiled.length === 0) return (e) => e;
  return (event) => {
    const { key } = eventBody(event);
    let inner = (event as unknown as Record<string, Record<string, unknown>>)[key];
    for (const f of compiled) if (f.tree.size > 0 && f.applies(event)) inner = f.action(inner, f.tree);
    return { ...event, [key]: inner } as TetragonEvent;
  };
}

// ---- server ----

export interface TetragonServerOptions {
  observer: RuntimeObserver;
  version: string;
  /** Health details for GetHealth; `running` when all is well (Tetragon's word). */
  health?(): { running: boolean; details: string };
}

interface GetEventsRequest {
  allow_list?: EventFilter[];
  deny_list?: EventFilter[];
  field_filters?: FieldFilterRequest[];
}

function grpcError(code: grpc.status, details: string): grpc.ServiceError {
  return Object.assign(new Error(details), { code, details, metadata: new grpc.Metadata() });
}

/** Serves tetragon.FineGuidanceSensors on TCP and root-only Unix sockets. */
export class TetragonServer {
  readonly #server = new grpc.Server();
  readonly #listeners = new GrpcListeners(
    this.#server,
    (address, error) => new RuntimeError('ERR_RUNTIME_LISTEN', `serving Tetragon's API on ${address}: ${error.message}`, { cause: error }),
  );
  #dropped = 0;

  constructor(options: TetragonServerOptions) {
    const service = (packageDefinition()['tetragon.FineGuidanceSensors'] as grpc.ServiceDefinition);
    // Checked whole first: a malformed policy, or one needing hooks this kernel lacks, is
    // INVALID_ARGUMENT naming every field, and nothing of it is loaded.
    const policyCall = <T>(run: () => T, callback: grpc.sendUnaryData<object>, reply: (value: T) => object = () => ({})) => {
      try {
        callback(null, reply(run()));
      } catch (error) {
        const code = RuntimeError.is(error, 'ERR_RUNTIME_POLICY')
          ? grpc.status.INVALID_ARGUMENT
          : RuntimeError.is(error, 'ERR_RUNTIME_POLICY_NOT_FOUND')
            ? grpc.status.NOT_FOUND
            : RuntimeError.is(error, 'ERR_RUNTIME_SENSOR')
              ? grpc.status.UNAVAILABLE
              : grpc.status.INTERNAL;
        callback(grpcError(code, (error as Error).message));
      }
    };
    const addTracingPolicy = (call: grpc.ServerUnaryCall<{ yaml?: string }, object>, callback: grpc.sendUnaryData<object>) => {
      if (!this.#mayChangePolicies(call.getPeer(), callback)) return;
      policyCall(() => options.observer.policies.add(call.request.yaml ?? ''), callback);
    };
    this.#server.addService(service, {
      GetEvents: (call: grpc.ServerWritableStream<GetEventsRequest, object>) => void this.#getEvents(options.observer, call),
      GetHealth: (_call: unknown, callback: grpc.sendUnaryData<object>) => {
        const health = options.health?.() ?? { running: true, details: 'running' };
        callback(null, { health_status: [{ event: 'HEALTH_STATUS_TYPE_STATUS', status: health.running ? 'HEALTH_STATUS_RUNNING' : 'HEALTH_STATUS_ERROR', details: health.details }] });
      },
      GetVersion: (_call: unknown, callback: grpc.sendUnaryData<object>) => callback(null, { version: options.version }),
      ListTracingPolicies: (_call: unknown, callback: grpc.sendUnaryData<object>) =>
        policyCall(
          () => options.observer.policies.list(),
          callback,
          (list) => ({
            policies: list.map((p) => ({
              id: String(p.id),
              name: p.name,
              namespace: p.namespace ?? '',
              info: `${p.kind}: ${p.stats.posted} events, ${p.stats.signalled} signals, ${p.stats.runs} calls seen`,
              sensors: p.sensors,
              enabled: p.enabled,
              state: p.enabled ? 'TP_STATE_ENABLED' : 'TP_STATE_DISABLED',
              mode: MODE_TO_PROTO[p.mode],
            })),
          }),
        ),
      AddTracingPolicy: addTracingPolicy,
      ConfigureTracingPolicy: (call: grpc.ServerUnaryCall<{ name?: string; enable?: boolean; mode?: string }, object>, callback: grpc.sendUnaryData<object>) => {
        if (!this.#mayChangePolicies(call.getPeer(), callback)) return;
        const { name = '', enable, mode } = call.request;
        const wanted = mode === undefined ? undefined : MODE_FROM_PROTO[mode];
        if (mode !== undefined && wanted === undefined) return callback(grpcError(grpc.status.INVALID_ARGUMENT, `tracing policy ${name}: mode ${mode}: want TP_MODE_ENFORCE or TP_MODE_MONITOR`));
        policyCall(() => options.observer.policies.configure(name, { ...(enable === undefined ? {} : { enable }), ...(wanted ? { mode: wanted } : {}) }), callback);
      },
      EnableTracingPolicy: (call: grpc.ServerUnaryCall<{ name?: string }, object>, callback: grpc.sendUnaryData<object>) => {
        if (!this.#mayChangePolicies(call.getPeer(), callback)) return;
        policyCall(() => options.observer.policies.configure(call.request.name ?? '', { enable: true }), callback);
      },
      DisableTracingPolicy: (call: grpc.ServerUnaryCall<{ name?: string }, object>, callback: grpc.sendUnaryData<object>) => {
        if (!this.#mayChangePolicies(call.getPeer(), callback)) return;
        policyCall(() => options.observer.policies.configure(call.request.name ?? '', { enable: false }), callback);
      },
      DeleteTracingPolicy: (call: grpc.ServerUnaryCall<{ name?: string }, object>, callback: grpc.sendUnaryData<object>) => {
        if (!this.#mayChangePolicies(call.getPeer(), callback)) return;
        policyCall(() => options.observer.policies.delete(call.request.name ?? ''), callback);
      },
    });
  }

  /**
   * Only root changes policies: the Unix socket is root's alone, and a TCP client must own its
   * socket as uid 0 (loopback only: the kernel's socket table says who it is). Anyone else gets
   * PERMISSION_DENIED, as does a peer that cannot be told.
   */
  #mayChangePolicies(peer: string, callback: grpc.sendUnaryData<object>): boolean {
    if (peer.startsWith('unix:')) return true;
    const uid = loopbackPeerUid(peer);
    if (uid === 0) return true;
    callback(grpcError(grpc.status.PERMISSION_DENIED, `changing tracing policies takes root: the client at ${peer} is ${uid === undefined ? 'not a local process this node can tell' : `uid ${uid}`}`));
    return false;
  }

  /** Events dropped because a client did not read them fast enough. */
  get dropped(): number {
    return this.#dropped;
  }

  async #getEvents(observer: RuntimeObserver, call: grpc.ServerWritableStream<GetEventsRequest, object>): Promise<void> {
    let pass: (event: TetragonEvent) => boolean;
    let shape: (event: TetragonEvent) => TetragonEvent;
    try {
      pass = compileFilters(call.request.allow_list, call.request.deny_list);
      shape = compileFieldFilters(call.request.field_filters);
    } catch (error) {
      call.emit('error', grpcError(RuntimeError.is(error) ? grpc.status.INVALID_ARGUMENT : grpc.status.INTERNAL, (error as Error).message));
      return;
    }
    const queue: TetragonEvent[] = [];
    let wake: (() => void) | undefined;
    const unsubscribe = observer.subscribe((event) => {
      if (!pass(event)) return;
      if (queue.length >= STREAM_QUEUE_LIMIT) {
        this.#dropped++;
        return;
      }
      queue.push(event);
      wake?.();
    });
    const abort = new AbortController();
    const stop = () => abort.abort();
    call.on('cancelled', stop);
    call.on('close', stop);
    call.on('error', stop);
    // Headers now: a client waiting for its first event learns at once that the call was taken.
    call.sendMetadata(new grpc.Metadata());
    try {
      while (!abort.signal.aborted) {
        if (queue.length === 0) {
          await new Promise<void>((resolve) => {
            wake = resolve;
            abort.signal.addEventListener('abort', () => resolve(), { once: true });
          });
          wake = undefined;
          continue;
        }
        const event = queue.shift()!;
        if (!call.write(toWireEvent(shape(event)))) await Promise.race([once(call, 'drain'), once(abort.signal, 'abort')]);
      }
    } finally {
      unsubscribe();
    }
  }

  /** Serves on `host:port`; returns the port bound (useful with port 0). */
  listenTcp(address: string): Promise<number> {
    return this.#listeners.bind(address);
  }

  /** Serves on a Unix socket only root can open (a stale socket file is replaced). */
  listenUnix(path: string): Promise<void> {
    return this.#listeners.listenUnix(path);
  }

  /** Stops serving; open event streams are cancelled (a follow never ends by itself). */
  close(): void {
    this.#listeners.close();
  }
}

// ---- client ----

export interface TetragonClient {
  /**
   * Events as they come, in their JSON form, until `cancel()` or the server ends the stream.
   * `ready` resolves once the server has taken the call: events from then on reach this stream.
   */
  getEvents(request: GetEventsRequest): AsyncIterable<TetragonEvent> & { cancel(): void; ready: Promise<void> };
  getVersion(): Promise<string>;
  getHealth(): Promise<{ event?: string; status?: string; details?: string }[]>;
  addTracingPolicy(yaml: string): Promise<void>;
  deleteTracingPolicy(name: string): Promise<void>;
  configureTracingPolicy(name: string, change: { enable?: boolean; mode?: PolicyMode }): Promise<void>;
  listTracingPolicies(): Promise<{ id?: string; name?: string; namespace?: string; info?: string; sensors?: string[]; enabled?: boolean; state?: string; mode?: string }[]>;
  close(): void;
}

/**
 * Connects to a Tetragon API (Ciliate's or Tetragon's own): `host:port` or `unix:/path`.
 *
 * @example
 * const client = connectTetragon('localhost:54321');
 * for await (const event of client.getEvents({ allow_list: [{ binary_regex: ['curl'] }] })) console.log(event);
 */
export function connectTetragon(target: string): TetragonClient {
  const proto = grpc.loadPackageDefinition(packageDefinition()) as unknown as { tetragon: { FineGuidanceSensors: grpc.ServiceClientConstructor } };
  const client = new proto.tetragon.FineGuidanceSensors(target, grpc.credentials.createInsecure()) as grpc.Client & Record<string, unknown>;
  const unary = <T>(method: string, request: object = {}) => unaryCall<T>(client, method, request);
  return {
    getEvents(request) {
      const call = (client.GetEvents as (request: object) => grpc.ClientReadableStream<Record<string, unknown>>).call(client, request);
      // The server sends its headers as soon as it has subscribed the stream (see #getEvents).
      const ready = new Promise<void>((resolve, reject) => {
        call.once('metadata', () => resolve());
        call.once('error', reject);
      });
      ready.catch(() => undefined);
      return Object.assign(cancellableStream(call, fromWireEvent), { ready });
    },
    getVersion: async () => (await unary<{ version?: string }>('GetVersion')).version ?? '',
    getHealth: async () => (await unary<{ health_status?: { event?: string; status?: string; details?: string }[] }>('GetHealth')).health_status ?? [],
    addTracingPolicy: async (yaml) => void (await unary('AddTracingPolicy', { yaml })),
    deleteTracingPolicy: async (name) => void (await unary('DeleteTracingPolicy', { name })),
    configureTracingPolicy: async (name, change) =>
      void (await unary('ConfigureTracingPolicy', { name, ...(change.enable === undefined ? {} : { enable: change.enable }), ...(change.mode ? { mode: MODE_TO_PROTO[change.mode] } : {}) })),
    listTracingPolicies: async () => (await unary<{ policies?: Awaited<ReturnType<TetragonClient['listTracingPolicies']>> }>('ListTracingPolicies')).policies ?? [],
    close: () => client.close(),
  };
}
