/**
 * TS codecs of the demo's C structs (bpf/demo.h). demo-types.test.ts checks them against the
 * object's BTF, so the two definitions cannot drift apart.
 * @module
 */
import { be16, ipv4, pad, struct, u32, u64, u64n, u8 } from '../ebpf/index.ts';

export const DemoDirection = { INGRESS: 0, EGRESS: 1 } as const;
export type DemoDirection = (typeof DemoDirection)[keyof typeof DemoDirection];

export const demoEvent = struct('demo_event', {
  timestamp_ns: u64,
  ifindex: u32,
  length: u32,
  saddr: ipv4,
  daddr: ipv4,
  sport: be16,
  dport: be16,
  protocol: u8,
  direction: u8,
  icmp_type: u8,
  _pad: pad(1),
});

export const demoCounter = struct('demo_counter', {
  packets: u64n,
  bytes: u64n,
});
