/**
 * Monitor aggregation (Cilium's --monitor-aggregation, -flags, -interval): how many trace events
 * the datapath sends. The node's programs read the setting from the one entry of
 * ciliate_monitor_cfg per packet (bpf/lib/maps.h), so writing it takes effect at once, with no
 * reload. Drops and policy verdicts are reported at every level.
 * @module
 */
import { join } from 'node:path';
import { BpfMap } from '../ebpf/index.ts';
import { MapName, monitorConfig, monitorConfigKey, TcpFlag, type MonitorConfigValue } from './maps.ts';

/**
 * Cilium's levels and numbers (pkg/option MonitorAggregationLevel*):
 *  - none: a trace per packet at every observation point;
 *  - lowest, low: no traces where packets are received (from-* points), at most one per packet;
 *  - medium: and a packet of an established connection only when conntrack has news — a FIN or
 *    RST, the first reply, a flag of `flags` first seen in its direction, or `interval` seconds
 *    since that direction was last reported;
 *  - maximum: as medium (Cilium's datapath does no more either).
 */
export const MonitorAggregation = { none: 0, lowest: 1, low: 2, medium: 3, maximum: 4 } as const;
export type MonitorAggregationLevel = keyof typeof MonitorAggregation;
export const MONITOR_AGGREGATION_LEVELS = Object.keys(MonitorAggregation) as [MonitorAggregationLevel, ...MonitorAggregationLevel[]];

/** TCP flag names as --monitor-aggregation-flags takes them; `all` is every flag. */
export const MONITOR_AGGREGATION_FLAG_NAMES = ['syn', 'fin', 'rst', 'psh', 'ack', 'urg', 'ece', 'cwr', 'all'] as const;
export type MonitorAggregationFlagName = (typeof MONITOR_AGGREGATION_FLAG_NAMES)[number];

/** Cilium's defaults. */
export const DEFAULT_MONITOR_AGGREGATION: MonitorAggregationLevel = 'medium';
export const DEFAULT_MONITOR_AGGREGATION_FLAGS: readonly MonitorAggregationFlagName[] = ['syn', 'fin', 'rst'];
export const DEFAULT_MONITOR_AGGREGATION_INTERVAL = 5;
/** The datapath keeps report times in 16 bits of seconds. */
export const MAX_MONITOR_AGGREGATION_INTERVAL = 65535;

export interface MonitorAggregationConfig {
  level: MonitorAggregationLevel;
  flags: readonly MonitorAggregationFlagName[];
  /** Seconds, 1 to MAX_MONITOR_AGGREGATION_INTERVAL. */
  intervalSeconds: number;
}

/** The flag bits of flag names. */
export function tcpFlagMask(names: readonly MonitorAggregationFlagName[]): number {
  let mask = 0;
  for (const name of names) mask |= name === 'all' ? 0xff : TcpFlag[name.toUpperCase() as keyof typeof TcpFlag];
  return mask;
}

/** The map entry for a configuration; throws a RangeError on an interval the datapath cannot hold. */
export function encodeMonitorConfig(config: MonitorAggregationConfig): MonitorConfigValue {
  const interval = config.intervalSeconds;
  if (!Number.isInteger(interval) || interval < 1 || interval > MAX_MONITOR_AGGREGATION_INTERVAL) {
    throw new RangeError(`monitor aggregation interval: ${interval} is not a whole number of seconds from 1 to ${MAX_MONITOR_AGGREGATION_INTERVAL}`);
  }
  return { aggregation: MonitorAggregation[config.level], report_flags: tcpFlagMask(config.flags), report_interval: interval };
}

/** Opens the node's pinned ciliate_monitor_cfg (created by the first load of the node's programs). */
export function openMonitorConfigMap(bpfRoot: string): BpfMap<number, MonitorConfigValue> {
  return BpfMap.openPinned(join(bpfRoot, 'maps', MapName.MONITOR_CFG), monitorConfigKey, monitorConfig);
}

/** Writes the node's monitor aggregation: every program sees it from its next packet on. */
export function writeMonitorConfig(map: BpfMap<number, MonitorConfigValue>, config: MonitorAggregationConfig): void {
  map.update(0, encodeMonitorConfig(config));
}

/** Writes the entry only when the kernel holds something else (drift); returns whether it wrote. */
export function ensureMonitorConfig(map: BpfMap<number, MonitorConfigValue>, config: MonitorAggregationConfig): boolean {
  const wanted = encodeMonitorConfig(config);
  const held = map.lookup(0);
  if (held && held.aggregation === wanted.aggregation && held.report_flags === wanted.report_flags && held.report_interval === wanted.report_interval) return false;
  map.update(0, wanted);
  return true;
}

/**
 * The options of the running agent that `ciliate config Option=value` changes without a restart,
 * under Cilium's names (`cilium-dbg config MonitorAggregationLevel=none`).
 */
export const RUNTIME_MONITOR_OPTION = 'MonitorAggregationLevel';

/** A level by name, any case; undefined for anything else. */
export function parseMonitorAggregationLevel(value: unknown): MonitorAggregationLevel | undefined {
  if (typeof value !== 'string') return undefined;
  const name = value.toLowerCase();
  return Object.hasOwn(MonitorAggregation, name) ? (name as MonitorAggregationLevel) : undefined;
}
