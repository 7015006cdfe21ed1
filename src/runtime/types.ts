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

/** One `GetEventsResponse`: exactly one event key, the node and the time. */
export type TetragonEvent = ({ process_exec: TetragonProcessExec } | { process_exit: TetragonProcessExit }) & {
  node_name: string;
  time: string;
};

/** tetragon.EventType values, by the names filters use. */
export const EventType = { UNDEF: 0, PROCESS_EXEC: 1, PROCESS_EXIT: 5, PROCESS_KPROBE: 9, PROCESS_TRACEPOINT: 10, PROCESS_LOADER: 11, PROCESS_UPROBE: 12 } as const;
export type EventTypeName = keyof typeof EventType;

export function eventTypeOf(event: TetragonEvent): EventTypeName {
  return 'process_exec' in event ? 'PROCESS_EXEC' : 'PROCESS_EXIT';
}

/** The event's subject process. */
export function processOf(event: TetragonEvent): TetragonProcess {
  return 'process_exec' in event ? event.process_exec.process : event.process_exit.process;
}
