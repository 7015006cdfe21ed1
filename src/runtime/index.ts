/**
 * Runtime security observability, compatible with Tetragon: process exec, fork and exit from BTF
 * tracepoints (this kernel has no kprobes, fentry or BPF LSM), a bounded process cache with
 * Tetragon's exec_ids, Tetragon's JSON events and its `tetragon.FineGuidanceSensors` gRPC API,
 * which a stock `tetra` reads.
 * @module
 */
export { RuntimeError, type RuntimeErrorCode } from './errors.ts';
export { EXEC_LIMITS, NAMESPACES, decodeRuntimeRecord, runtimeExecEvent, runtimeExitEvent, runtimeForkEvent, type ExecRecord, type ExitRecord, type ForkRecord, type NamespaceName, type RuntimeRecord } from './events.ts';
export { ProcessCache, execIdOf, type ProcessCacheOptions, type ProcessCacheStats, type ProcessEntry, type ProcessSnapshot } from './process-cache.ts';
export { readAllProcesses, readProcess } from './procfs.ts';
export { ProcessSensor, type SensorOptions, type SensorStats } from './sensor.ts';
export { RuntimeObserver, argumentsString, capabilityNames, protoTimestamp, type EventListener, type RuntimeObserverOptions, type RuntimeObserverStats } from './runtime-observer.ts';
export { compileFilters, type EventFilter } from './filter.ts';
export { TETRAGON_DEFAULT_ADDRESS, TETRAGON_PROTO_DIR, TetragonServer, compileFieldFilters, connectTetragon, fromWireEvent, toWireEvent, type FieldFilterRequest, type TetragonClient, type TetragonServerOptions } from './grpc.ts';
export { compactLine } from './printer.ts';
export { EventType, eventBody, eventTypeOf, processOf, type EventTypeName, type TetragonArg, type TetragonEvent, type TetragonPod, type TetragonProcess, type TetragonProcessKprobe, type TetragonProcessTracepoint } from './types.ts';
export { EventExporter, parseEventFilters, type EventExporterOptions, type EventExporterStats } from './export.ts';
export { MISSING_HOOK_REASON, POLICY_LIMITS, compileTracingPolicy, type CompiledTracingPolicy, type PolicyProblem, type TracingPolicyHeader } from './tracing-policy.ts';
export { PolicyManager, type PolicyStats, type PolicyStatus, type ScopeContainer, type ScopePod } from './policy.ts';
export { containerOfProcess, findContainerCgroups } from './containers.ts';
export { RuntimePolicies } from './runtime-policies.ts';
export { SocketEnforcer, decodeSocketRecord, socketKprobeBody, type SocketPolicyStats, type SocketPolicyStatus, type SocketRecord } from './socket-enforcer.ts';
export { SOCKET_POLICY_LIMITS, compileSocketPolicy, wantsSocketEnforcement, type CompiledSocketPolicy, type SocketRule, type SocketSelector } from './socket-policy.ts';
export { parseIdentityValue, parseServiceValue, type DestinationFrontend, type SocketDestinations } from './socket-destinations.ts';
export { POLICY_MODES, readPolicyOptions, withPolicyMode, type PolicyMode, type PolicyModeStatus } from './policy-mode.ts';
