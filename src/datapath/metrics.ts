/**
 * The datapath's own counters (bpf/lib/events.h), summed over CPUs: packets and bytes by drop
 * reason and direction (ciliate_metrics), counting every drop, including those whose event the
 * ring buffer had no room for; and forwarded packets and bytes by direction
 * (ciliate_forward_metrics).
 * @module
 */
import { join } from 'node:path';
import { BpfMap, u32 } from '../ebpf/index.ts';
import { dropReasonName } from './drop-reasons.ts';
import { MapName, MetricDirection, metricsKey, metricsValue } from './maps.ts';

export interface DatapathCount {
  /** The drop reason's number, 0 for forwarded. */
  reason: number;
  /** Hubble's name of the reason, or FORWARDED. */
  reasonName: string;
  direction: 'ingress' | 'egress';
  packets: number;
  bytes: number;
}

/** Every counter of the node's datapath, from the pinned map under `bpfRoot`/maps. */
export function readDatapathMetrics(bpfRoot: string): DatapathCount[] {
  using map = BpfMap.openPinned(join(bpfRoot, 'maps', MapName.METRICS), metricsKey, metricsValue);
  const counts: DatapathCount[] = [];
  for (const [key, perCpu] of map.entriesPerCpu()) {
    counts.push({
      reason: key.reason,
      reasonName: key.reason === 0 ? 'FORWARDED' : dropReasonName(key.reason),
      direction: key.dir === MetricDirection.INGRESS ? 'ingress' : 'egress',
      packets: perCpu.reduce((sum, v) => sum + v.packets, 0),
      bytes: perCpu.reduce((sum, v) => sum + v.bytes, 0),
    });
  }
  using forwards = BpfMap.openPinned(join(bpfRoot, 'maps', MapName.FORWARD_METRICS), u32, metricsValue);
  for (const [dir, perCpu] of forwards.entriesPerCpu()) {
    const packets = perCpu.reduce((sum, v) => sum + v.packets, 0);
    if (packets === 0 || (dir !== MetricDirection.INGRESS && dir !== MetricDirection.EGRESS)) continue;
    counts.push({ reason: 0, reasonName: 'FORWARDED', direction: dir === MetricDirection.INGRESS ? 'ingress' : 'egress', packets, bytes: perCpu.reduce((sum, v) => sum + v.bytes, 0) });
  }
  return counts.sort((a, b) => a.reason - b.reason || a.direction.localeCompare(b.direction));
}

/** Dropped packets by reason name, both directions together: the at-a-glance view of `ciliate status`. */
export function dropsByReason(counts: readonly DatapathCount[]): Record<string, number> {
  const drops: Record<string, number> = {};
  for (const count of counts) if (count.reason !== 0) drops[count.reasonName] = (drops[count.reasonName] ?? 0) + count.packets;
  return drops;
}
