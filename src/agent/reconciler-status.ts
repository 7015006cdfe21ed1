/**
 * The agent's health as `ciliate status` shows it: each module that writes the kernel reports its
 * reconcilers' health, and a module whose health or reconciler keeps failing turns the agent
 * degraded, naming the module.
 * @module
 */
import type { ReconcilerHealth } from '../statedb/index.ts';

/** One reconciler's health, with the agent module that owns it. */
export type ReconcilerModuleHealth = ReconcilerHealth & { module: string };

/** The health fields of the agent's status. */
export interface ReconcilerStatus {
  /** `degraded` while any module or reconciler is. */
  state: 'ok' | 'degraded';
  /** Why it is degraded: `<module>: <what keeps failing>`, one per module health or reconciler. */
  reasons: string[];
  reconcilers: ReconcilerModuleHealth[];
}
