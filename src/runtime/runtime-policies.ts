/**
 * Every loaded TracingPolicy under one name space: a policy that overrides socket calls (an
 * `Override` on sys_connect, sys_bind or sys_socket) goes to the socket enforcer (cgroup hooks,
 * socket-enforcer.ts), any other to the tracepoint engine (policy.ts). Add, delete and list (the
 * gRPC API, `tetra tracingpolicy`, the local API) see both, and a name is taken once over both.
 * @module
 */
import type { BpfObject } from '../ebpf/index.ts';
import { RuntimeError } from './errors.ts';
import { PolicyManager, alreadyLoaded, type PolicyStatus, type ScopePod } from './policy.ts';
import { SocketEnforcer, type SocketPolicyStatus } from './socket-enforcer.ts';
import { compileSocketPolicy } from './socket-policy.ts';

export class RuntimePolicies extends PolicyManager {
  readonly sockets: SocketEnforcer | undefined;
  readonly #hostNetns: number;

  /** `sockets`: undefined when no enforce cgroup is configured (Override policies are refused). */
  constructor(object: BpfObject, sockets: SocketEnforcer | undefined, hostNetns: number) {
    super(object);
    this.sockets = sockets;
    this.#hostNetns = hostNetns;
  }

  override add(text: string): PolicyStatus {
    const socket = compileSocketPolicy(text, this.#hostNetns, { destinations: this.sockets?.hasDestinations === true });
    // The name is checked across both before the tracepoint engine writes anything (nameTaken).
    if (!socket) return super.add(text);
    if (!this.sockets) throw new RuntimeError('ERR_RUNTIME_POLICY', `tracing policy ${socket.header.name}: Override is served at the cgroup socket hooks, and no enforce cgroup is configured (--runtime-enforce-cgroup)`, { details: [{ field: 'spec.kprobes', reason: 'no enforce cgroup configured' }] });
    if (super.nameTaken(socket.header.name)) throw alreadyLoaded(socket.header.name);
    return this.sockets.add(socket);
  }

  protected override nameTaken(name: string): boolean {
    return super.nameTaken(name) || this.sockets?.has(name) === true;
  }

  override delete(name: string): void {
    if (this.sockets?.has(name)) this.sockets.delete(name);
    else super.delete(name);
  }

  override list(): PolicyStatus[] {
    return [...super.list(), ...(this.sockets?.list() ?? [])];
  }

  override get(name: string): PolicyStatus | SocketPolicyStatus | undefined {
    return super.get(name) ?? this.sockets?.list().find((p) => p.name === name);
  }

  /** Scoped policies of both engines follow the pods. */
  override setPods(pods: ScopePod[]): void {
    super.setPods(pods);
    this.sockets?.setPods(pods);
  }

  override close(): void {
    super.close();
    this.sockets?.close();
  }
}
