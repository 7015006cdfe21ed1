/**
 * statedb: revisioned in-memory tables and the reconcilers that push their changes into the
 * kernel, incrementally. Sources only write tables; reconcilers only read them.
 * @module
 */
export { Table, ChangeReader, type Change, type TableOptions } from './table.ts';
export { Reconciler, type ReconcilerOps, type ReconcilerOptions, type ReconcileStatus, type ReconcileState, type ReconcilerHealth } from './reconciler.ts';
