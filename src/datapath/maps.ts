/**
 * The node-wide maps of the endpoint datapath (bpf/lib/maps.h): their names, key and value
 * codecs, and flag values. layout.test.ts checks every codec against the compiled object's BTF.
 * @module
 */
import { be16, ipv4, mac, pad, struct, u16, u32, u64n, u8, type StructValue } from '../ebpf/index.ts';

/** Map names in the object, which are also the names of their pins. */
export const MapName = {
  LXC: 'ciliate_lxc',
  /** Host-side ifindex (u32) → the endpoint_key of the endpoint behind it: names the sender of drops. */
  LXC_IFINDEX: 'ciliate_lxc_ifindex',
  IPCACHE: 'ciliate_ipcache',
  CT4: 'ciliate_ct4',
  EVENTS: 'ciliate_events',
  EVENTS_LOST: 'ciliate_events_lost',
  NODE_CFG: 'ciliate_node_cfg',
  /** Hash of maps: endpoint id (u32) → the endpoint's policy LPM trie (src/policy/policy-map.ts layout). */
  POLICY_MAPS: 'ciliate_policy_maps',
  /** Per-CPU packets and bytes by drop reason and direction. */
  METRICS: 'ciliate_metrics',
  /** Per-CPU array: forwarded packets and bytes, indexed by MetricDirection. */
  FORWARD_METRICS: 'ciliate_forward_metrics',
  /** One entry: the node's monitor aggregation level, report flags and interval (src/datapath/monitor-config.ts). */
  MONITOR_CFG: 'ciliate_monitor_cfg',
  /** Sender address and port of a datagram (or TCP connection) handed to a proxy → where it was going, and the sender's identity (proxy4Key, proxy4Value). */
  PROXY4: 'ciliate_proxy4',
  /** The node proxies' listening sockets by port (SOCKHASH; u32 port → the socket, given as its fd on update). */
  PROXY_LISTENERS: 'ciliate_proxy_listeners',
} as const;
export type MapName = (typeof MapName)[keyof typeof MapName];

/**
 * The service load-balancing maps (bpf/lib/lb.h): written by src/loadbalancer, read by the socket
 * hooks and by the endpoint datapath's TC translation, so every object defines and shares them.
 */
export const LbMapName = {
  SERVICES: 'ciliate_lb4_services',
  BACKENDS: 'ciliate_lb4_backends',
  REVERSE_NAT: 'ciliate_lb4_reverse_nat',
  REVERSE_SK: 'ciliate_lb4_reverse_sk',
  MAGLEV: 'ciliate_lb4_maglev',
  AFFINITY: 'ciliate_lb4_affinity',
  AFFINITY_MATCH: 'ciliate_lb_affinity_match',
  /** North-south SNAT and reverse translation of bpf_host (tuple → lb4_nat). */
  NAT: 'ciliate_lb4_nat',
  /** Network namespace cookie → the local endpoint in it: the socket hooks name a refused connect's pod. */
  SOCK_ENDPOINTS: 'ciliate_sock_endpoints',
} as const;
export type LbMapName = (typeof LbMapName)[keyof typeof LbMapName];

/** Every map the loads of bpf_lxc.o, bpf_overlay.o and bpf_sock.o share through pins. */
export const SHARED_MAPS: readonly (MapName | LbMapName)[] = [...Object.values(MapName), ...Object.values(LbMapName)];

/** Reserved security identities (Cilium's numbering). */
export const ReservedIdentity = { UNKNOWN: 0, HOST: 1, WORLD: 2, REMOTE_NODE: 6 } as const;

// ciliate_lxc: local endpoints by IPv4 address.

export const endpointKey = struct('endpoint_key', { ip: ipv4 });

/** endpoint_info.flags */
export const EndpointFlag = { HOST: 0x01 } as const;

export const endpointInfo = struct('endpoint_info', {
  /** Host-side veth, in the node's namespace. */
  ifindex: u32,
  lxc_id: u16,
  flags: u16,
  /** The pod's eth0. */
  mac,
  /** The host-side veth: source MAC of frames delivered to the pod. */
  node_mac: mac,
  sec_identity: u32,
});
export type EndpointInfo = StructValue<(typeof endpointInfo)['fields']>;

// ciliate_lxc_ifindex: host-side ifindex → endpoint_key (the address) of the endpoint behind it.

export const lxcIfindexKey = u32;

// ciliate_ipcache: identity and tunnel endpoint of any prefix.

export const ipcacheKey = struct('ipcache_key', { prefixlen: u32, ip: ipv4 });

/** remote_endpoint_info.flags */
export const IpcacheFlag = { HAS_TUNNEL_EP: 0x01 } as const;

export const remoteEndpointInfo = struct('remote_endpoint_info', {
  sec_identity: u32,
  tunnel_endpoint: ipv4,
  flags: u8,
  _pad: pad(3),
});
export type RemoteEndpointInfo = StructValue<(typeof remoteEndpointInfo)['fields']>;

// ciliate_ct4: connection tracking.

/** ipv4_ct_tuple.flags: the kind of hook that created the entry; SERVICE: a connection to a
 * service frontend as the client sent it, translated in TC (its entry names the backend). */
export const CtDirection = { EGRESS: 0, INGRESS: 1, SERVICE: 2 } as const;
export type CtDirection = (typeof CtDirection)[keyof typeof CtDirection];

/** Addresses and ports are those of the packet that opened the connection. */
export const ctTuple = struct('ipv4_ct_tuple', {
  daddr: ipv4,
  saddr: ipv4,
  dport: be16,
  sport: be16,
  nexthdr: u8,
  flags: u8,
  _pad: pad(2),
});
export type CtTuple = StructValue<(typeof ctTuple)['fields']>;

/** ct_entry.flags */
export const CtFlag = { SEEN_NON_SYN: 0x01, TX_CLOSING: 0x02, RX_CLOSING: 0x04, SEEN_REPLY: 0x08, PROXY_REDIRECT: 0x10 } as const;

/** TCP header flag bits, as ct_entry's tx/rx_flags_seen hold them. */
export const TcpFlag = { FIN: 0x01, SYN: 0x02, RST: 0x04, PSH: 0x08, ACK: 0x10, URG: 0x20, ECE: 0x40, CWR: 0x80 } as const;

export const ctEntry = struct('ct_entry', {
  packets: u64n,
  bytes: u64n,
  /** Expiry in seconds of CLOCK_BOOTTIME. */
  lifetime: u32,
  flags: u16,
  tx_flags_seen: u8,
  rx_flags_seen: u8,
  src_sec_id: u32,
  /** When each direction was last reported by a trace (monitor aggregation): CLOCK_BOOTTIME seconds mod 2^16. */
  last_tx_report: u16,
  last_rx_report: u16,
  /** CT_SERVICE entries: the backend the connection was given (TC service translation). */
  backend_id: u32,
  /** Entries of a translated connection: the service its replies are reverse-NATed to; 0: none. */
  rev_nat_index: u16,
  /** PROXY_REDIRECT entries: the node proxy's port (a UDP flow's datagrams are assigned to it one by one). */
  proxy_port: u16,
});
export type CtEntry = StructValue<(typeof ctEntry)['fields']>;

// ciliate_proxy4: the original destination of what the datapath handed to a proxy, and the sender's identity.

export const proxy4Key = struct('proxy4_key', { saddr: ipv4, sport: be16, nexthdr: u8, _pad: pad(1) });
export const proxy4Value = struct('proxy4_value', { orig_daddr: ipv4, orig_dport: be16, handoff_port: u16, identity: u32 });
export type Proxy4Key = StructValue<(typeof proxy4Key)['fields']>;
export type Proxy4Value = StructValue<(typeof proxy4Value)['fields']>;

// ciliate_node_cfg: node-wide settings, one entry at key 0.

export const nodeConfigKey = u32;

/** node_config.routing_mode (C ROUTING_MODE_*). */
export const RoutingModeCode = { UNSET: 0, TUNNEL: 1, NATIVE: 2 } as const;

export const nodeConfig = struct('node_config', {
  /** The VXLAN device in collect_md mode, 0 when the node has none (native routing). */
  tunnel_ifindex: u32,
  routing_mode: u32,
  /** Native mode: pods' packets to this CIDR are forwarded by FIB lookup past the stack. */
  native_cidr: ipv4,
  /** 0: no such CIDR, everything goes through the stack. */
  native_cidr_prefixlen: u32,
});
export type NodeConfig = StructValue<(typeof nodeConfig)['fields']>;

// ciliate_monitor_cfg: monitor aggregation, one entry at key 0 (src/datapath/monitor-config.ts).

export const monitorConfigKey = u32;

export const monitorConfig = struct('ciliate_monitor_config', {
  /** MonitorAggregation: Cilium's level numbers. */
  aggregation: u8,
  /** TCP flag bits (TcpFlag) whose first sighting in a direction is reported. */
  report_flags: u8,
  /** Seconds; 0 only in an entry never written, which the datapath reads as the defaults. */
  report_interval: u16,
});
export type MonitorConfigValue = StructValue<(typeof monitorConfig)['fields']>;

// ciliate_policy_maps: endpoint id → the endpoint's policy map (inner map id on lookup).

export const policyMapsKey = u32;
/** max_entries of ciliate_policy_maps (CILIATE_POLICY_MAPS_MAX). */
export const POLICY_MAPS_MAX_ENTRIES = 16384;

// ciliate_metrics: packets and bytes by drop reason and direction (bpf/lib/events.h).

export const metricsKey = struct('ciliate_metrics_key', {
  /** A drop reason (src/datapath/drop-reasons.ts), 0 for forwarded. */
  reason: u8,
  /** MetricDirection */
  dir: u8,
  _pad: u16,
});
export type MetricsKey = StructValue<(typeof metricsKey)['fields']>;

/** ciliate_metrics_key.dir (C CILIATE_METRIC_*). */
export const MetricDirection = { INGRESS: 1, EGRESS: 2 } as const;

export const metricsValue = struct('ciliate_metrics_value', { packets: u64n, bytes: u64n });
export type MetricsValue = StructValue<(typeof metricsValue)['fields']>;
