/**
 * The datapath's shared definitions: TS codecs of the C structs in bpf/, each beside a test of
 * its layout against the compiled object's BTF.
 * @module
 */
export * from './demo-types.ts';
export * from './drop-reasons.ts';
export * from './maps.ts';
export * from './events.ts';
export * from './packet.ts';
export * from './lxc.ts';
export * from './endpoint-datapath.ts';
export * from './netlink/index.ts';
export * from './node-networking.ts';
export * from './masquerade.ts';
export * from './overlay.ts';
export * from './node-routing.ts';
export * from './policy-maps.ts';
export * from './metrics.ts';
export * from './monitor-config.ts';
export * from './proxy-lookup.ts';
