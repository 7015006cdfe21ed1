/**
 * Tetragon's events as its JSON export writes them: protojson of `tetragon.GetEventsResponse`
 * with proto field names (snake_case), defaults left out, 32-bit wrappers as plain numbers and
 * timestamps as RFC 3339 strings. The gRPC side (grpc.ts) converts these to the wire form.
 * @module
 */
import type { NamespaceName } from './events.ts';

export interface TetragonContainer {
  id?: string;
  name?: string;
  image?: { id?: string; name?: string };
  start_time?: string;
  pid?: number;
}

export interface TetragonPod {
  namespace: string;
  name: string;
  container?: TetragonContainer;
  pod_labels?: Record<string, string>;
  workload?: string;
}

export interface TetragonCapabilities {
  permitted?: string[];
  effective?: string[];
  inheritable?: string[];
}

export type TetragonNamespaces = Partial<Record<NamespaceName, { inum: number; is_host?: boolean }>>;

export interface TetragonProcess {
  exec_id: string;
  pid: number;
  uid: number;
  cwd?: string;
  binary: string;
  arguments?: string;
  flags: string;
  start_time: string;
  auid: number;
  pod?: TetragonPod;
  docker?: string;
  parent_exec_id?: string;
  refcnt?: number;
  cap?: TetragonCapabilities;
  ns?: TetragonNamespaces;
  tid: number;
}

export interface TetragonProcessExec {
  process: TetragonProcess;
  parent?: TetragonProcess;
  ancestors?: TetragonProcess[];
}

export interface TetragonProcessExit {
  process: TetragonProcess;
  parent?: TetragonProcess;
  signal?: string;
  status?: number;
  time?: string;
}

/** tetragon.KprobeArgument: one of its typed fields, and the policy's label. */
export type TetragonArg = (
  | { int_arg: number }
  | { uint_arg: number }
  | { long_arg: string }
  | { size_arg: string }
  | { string_arg: string }
  | { bytes_arg: string }
  | { sock_arg: { family: string; daddr?: string; dport?: number; saddr?: string; sport?: number } }
) & { label?: string };

export type TetragonAction = 'KPROBE_ACTION_POST' | 'KPROBE_ACTION_NOPOST' | 'KPROBE_ACTION_SIGKILL' | 'KPROBE_ACTION_SIGNAL' | 'KPROBE_ACTION_OVERRIDE';

export interface TetragonProcessKprobe {
  process: TetragonProcess;
  parent?: TetragonProcess;
  function_name: string;
  args?: TetragonArg[];
  action: TetragonAction;
  policy_name: string;
  message?: string;
  tags?: string[];
}

export interface TetragonProcessTracepoint {
  process: TetragonProcess;
  parent?: TetragonProcess;
  subsys: string;
  event: string;
  args?: TetragonArg[];
  policy_name: string;
  action: TetragonAction;
  message?: string;
  tags?: string[];
}

/** One `GetEventsResponse`: exactly one event key, the node and the time. */
export type TetragonEvent = (
  | { process_exec: TetragonProcessExec }
  | { process_exit: TetragonProcessExit }
  | { process_kprobe: TetragonProcessKprobe }
  | { process_tracepoint: TetragonProcessTracepoint }
) & {
  node_name: string;
  time: string;
};

/** The event's key and body. */
export function eventBody(event: TetragonEvent): { key: 'process_exec' | 'process_exit' | 'process_kprobe' | 'process_tracepoint'; body: { process: TetragonProcess; parent?: TetragonProcess } } {
  if ('process_exec' in event) return { key: 'process_exec', body: event.process_exec };
  if ('process_exit' in event) return { key: 'process_exit', body: event.process_exit };
  if ('process_kprobe' in event) return { key: 'process_kprobe', body: event.process_kprobe };
  return { key: 'process_tracepoint', body: event.process_tracepoint };
}

/** tetragon.EventType values, by the names filters use. */
export const EventType = { UNDEF: 0, PROCESS_EXEC: 1, PROCESS_EXIT: 5, PROCESS_KPROBE: 9, PROCESS_TRACEPOINT: 10, PROCESS_LOADER: 11, PROCESS_UPROBE: 12 } as const;
export type EventTypeName = keyof typeof EventType;

export function eventTypeOf(event: TetragonEvent): EventTypeName {
  return eventBody(event).key.toUpperCase() as EventTypeName;
}

/** The event's subject process. */
export function processOf(event: TetragonEvent): TetragonProcess {
  return eventBody(event).body.process;
}
