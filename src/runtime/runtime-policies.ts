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
import type { PolicyMode } from './policy-mode.ts';
import type { CompileOptions } from './tracing-policy.ts';
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

  /**
   * Policies by name as they were loaded (their text and what loading or configuring said), so
   * a mode change recompiles one from its text; `disabled`: its status when it was unloaded, kept
   * to list it (a policy is enabled exactly when it has none).
   */
  readonly #records = new Map<string, { text: string; mode?: PolicyMode; disabled?: PolicyStatus }>();

  override add(text: string, options: CompileOptions = {}): PolicyStatus {
    const status = this.#load(text, options);
    this.#records.set(status.name, { text, ...(options.mode ? { mode: options.mode } : {}) });
    return status;
  }

  #load(text: string, options: CompileOptions): PolicyStatus {
    const socket = compileSocketPolicy(text, this.#hostNetns, { ...options, destinations: this.sockets?.hasDestinations === true });
    // The name is checked across both before the tracepoint engine writes anything (nameTaken).
    if (!socket) return super.add(text, options);
    if (!this.sockets) throw new RuntimeError('ERR_RUNTIME_POLICY', `tracing policy ${socket.header.name}: Override is served at the cgroup socket hooks, and no enforce cgroup is configured (--runtime-enforce-cgroup)`, { details: [{ field: 'spec.kprobes', reason: 'no enforce cgroup configured' }] });
    if (super.nameTaken(socket.header.name)) throw alreadyLoaded(socket.header.name);
    return this.sockets.add(socket);
  }

  #unload(name: string): void {
    if (this.sockets?.has(name)) this.sockets.delete(name);
    else super.delete(name);
  }

  /**
   * Enables or disables a policy, or sets its mode (ConfigureTracingPolicy, `tetra tracingpolicy
   * set-mode`). A change is the policy unloaded and loaded again from its text: for that moment
   * neither its events nor its enforcement run. A failed load puts back what was there. A
   * policy with no enforcing action is monitor_only: asking it to change mode is an error, as in
   * Tetragon.
   */
  configure(name: string, change: { enable?: boolean; mode?: PolicyMode }): PolicyStatus {
    const record = this.#records.get(name);
    if (!record) throw new RuntimeError('ERR_RUNTIME_POLICY_NOT_FOUND', `tracing policy ${JSON.stringify(name)} not found`);
    const current = record.disabled ?? this.get(name);
    if (change.mode !== undefined && current?.mode === 'monitor_only') {
      throw new RuntimeError('ERR_RUNTIME_POLICY', `tracing policy ${name}: no Sigkill, Signal or Override to enforce (monitor_only): its mode cannot be set`, { details: [{ field: 'mode', reason: 'the policy is monitor_only' }] });
    }
    const mode = change.mode ?? record.mode;
    const enabled = change.enable ?? !record.disabled;
    if (!record.disabled) this.#unload(name);
    // Out of the name space while it is loaded again (a disabled policy holds its name).
    this.#records.delete(name);
    try {
      if (enabled) {
        const status = this.#load(record.text, mode ? { mode } : {});
        this.#records.set(name, { text: record.text, ...(mode ? { mode } : {}) });
        return status;
      }
      // A monitor_only policy refused a mode above, so the mode asked for is the one it now has.
      const disabled: PolicyStatus = { ...(current as PolicyStatus), mode: change.mode ?? current?.mode ?? 'enforce', enabled: false };
      this.#records.set(name, { text: record.text, ...(mode ? { mode } : {}), disabled });
      return disabled;
    } catch (error) {
      if (!record.disabled) this.#load(record.text, record.mode ? { mode: record.mode } : {});
      this.#records.set(name, record);
      throw error;
    }
  }

  protected override nameTaken(name: string): boolean {
    return super.nameTaken(name) || this.sockets?.has(name) === true || this.#records.get(name)?.disabled !== undefined;
  }

  override delete(name: string): void {
    if (!this.#records.get(name)?.disabled) this.#unload(name);
    this.#records.delete(name);
  }

  override list(): PolicyStatus[] {
    const disabled = [...this.#records.values()].flatMap((r) => (r.disabled ? [r.disabled] : []));
    return [...super.list(), ...(this.sockets?.list() ?? []), ...disabled];
  }

  override get(name: string): PolicyStatus | SocketPolicyStatus | undefined {
    return super.get(name) ?? this.sockets?.list().find((p) => p.name === name) ?? this.#records.get(name)?.disabled;
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
