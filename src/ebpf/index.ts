/**
 * Ciliate's eBPF library: load clang-built BPF objects, drive maps, attach programs through
 * links, read ring buffers over mmap, and probe what the kernel supports — from TypeScript.
 *
 * It imports nothing from the rest of Ciliate, so it can be published on its own. It needs
 * root, libbpf.so.1 (ELF parsing and CO-RE) and the koffi FFI package; everything else is
 * raw bpf(2).
 *
 * @example
 * using obj = BpfObject.load('build/bpf/demo.o', { constants: { DEMO_DIRECTION: 0 } });
 * const link = attachTcx(obj.program('demo_observe'), { interface: 'veth0', direction: 'ingress' });
 * @module
 */
export * from './errors.ts';
export * from './codec.ts';
export { BpfMap, possibleCpus, mapInfo, type MapSpec, type MapInfoData } from './map.ts';
export { Program, programInfo, enableRunStats, type ProgramInfoData, type ProgramMeta, type TestRunOptions, type TestRunResult } from './program.ts';
export { BpfObject, type LoadOptions, type ConstantValue } from './object.ts';
export { Btf, checkLayout, type BtfStructLayout, type BtfDatasec, type BtfMember, type BtfKind } from './btf.ts';
export { Link, unpinLink, unpinLinkAsync, linkInfo, type LinkInfoData } from './link/link.ts';
export { attachTcx, attachTcxAsync, queryTcx, type TcxOptions, type TcxAsyncOptions, type TcxDirection, type TcxAttachments } from './link/tcx.ts';
export { attachXdp, type XdpOptions, type XdpMode } from './link/xdp.ts';
export { attachNetkit, type NetkitOptions } from './link/netkit.ts';
export { attachCgroup, type CgroupOptions } from './link/cgroup.ts';
export { attachSkLookup, type SkLookupOptions } from './link/sk-lookup.ts';
export { inNetns, namedNetns } from './netns.ts';
export { RingBuffer, type RingBufferOptions, type RingBufferStats, type RecordHandler, type StartOptions, type WakeupMode } from './ringbuf.ts';
export { MapType, ProgramType, AttachType, LinkType, UpdateFlag, MapFlag } from './internal/constants.ts';
/** if_nametoindex(3) in the caller's network namespace; throws ERR_NOT_FOUND-family errors for no such interface. */
export { interfaceIndex } from './internal/sys.ts';
export * from './features.ts';
export { attachTracepoint, attachRawTracepoint, attachTracing, attachAuto, type TracepointOptions } from './link/tracing.ts';
export { attachUprobe, type UprobeOptions } from './link/uprobe.ts';
