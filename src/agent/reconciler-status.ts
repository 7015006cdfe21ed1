/**
 * The agent's health from its reconcilers: each module that writes the kernel reports its
 * reconcilers' health, and one that keeps failing turns the agent degraded, naming the module.
 * @module
 */
import type { ReconcilerHealth } from '../statedb/index.ts';

/** One reconciler's health, with the agent module that owns it. */
export type ReconcilerModuleHealth = ReconcilerHealth & { module: string };

export interface ReconcilerStatus {
  /** `degraded` while any reconciler is. */
  state: 'ok' | 'degraded';
  /** Why it is degraded: `<module>: <reconciler>: <what keeps failing>`, one per reconciler. */
  reasons: string[];
  reconcilers: ReconcilerModuleHealth[];
}

/**
 * @example
 * reconcilerStatus([{ module: 'policy', ...policy.health() }]).state // 'ok' | 'degraded'
 */
export function reconcilerStatus(reconcilers: ReconcilerModuleHealth[]): ReconcilerStatus {
  const reasons = reconcilers.filter((r) => r.degraded).map((r) => `${r.module}: ${r.reason ?? `${r.name} is degraded`}`);
  return { state: reasons.length > 0 ? 'degraded' : 'ok', reasons, reconcilers };
}
