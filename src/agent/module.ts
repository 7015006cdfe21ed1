/**
 * The agent as a list of modules, as Cilium's hive is a list of cells. A module names what it
 * needs (cells other modules provide), what it provides, its own configuration and API routes,
 * and how it starts and stops. The agent orders modules by what they need, starts them in that
 * order and stops them in reverse; a failed start stops what had started and names the module.
 *
 * A module's start returns the object it provides, whole: nothing in the agent holds a field that
 * is `undefined` until something has started.
 * @module
 */
import type { Logger } from 'pino';
import type { z } from 'zod';
import type { ReconcilerHealth } from '../statedb/index.ts';
import type { ReconcilerModuleHealth, ReconcilerStatus } from './reconciler-status.ts';
import { ApiServer, type ApiRouter } from './api-server.ts';
import type { CoreConfig } from './config.ts';

/** A typed name for something one module provides and others need. */
export interface Cell<T> {
  readonly name: string;
  /** Never set: carries T for type inference. */
  readonly type?: T;
}

export function cell<T>(name: string): Cell<T> {
  return { name };
}

type CellMap = Record<string, Cell<unknown>>;
/** The values of the cells a module needs, by the names it gave them. */
export type Needed<N extends CellMap> = { readonly [K in keyof N]: N[K] extends Cell<infer T> ? T : never };

/** A module's health line in `ciliate status`; `degraded` turns the agent's state degraded. */
export interface ModuleHealth {
  degraded: boolean;
  /** Why, when degraded: names the object and the error. */
  reason?: string;
  [detail: string]: unknown;
}

export interface ModuleContext<C = CoreConfig> {
  /** The shared settings and the module's own. */
  readonly config: C;
  /** The module's own logger (`module: <name>`). */
  readonly log: Logger;
  /** The API's routes: a module adds its own. */
  readonly api: ApiRouter;
  /** Runs once every module has started (in module order), e.g. to start serving. */
  onReady(hook: () => Promise<void> | void): void;
  /** The whole agent's health as `ciliate status` shows it, now: for modules that report it (metrics). */
  agentHealth(): ReconcilerStatus;
}

export interface Started<P> {
  /** What the module provides (its `provides` cell's value). */
  value: P;
  stop?(): Promise<void> | void;
  /** Health for `ciliate status`. */
  health?(): ModuleHealth;
  /** The module's reconcilers: one that keeps failing turns the agent degraded, naming the module. */
  reconcilers?(): ReconcilerHealth[];
  /** Fields of `ciliate status` (merged with every other module's). */
  status?(): Record<string, unknown>;
}

export interface AgentModule<N extends CellMap = CellMap, P = unknown, S extends z.ZodRawShape = z.ZodRawShape> {
  name: string;
  description: string;
  /**
   * The module's settings: fields of the agent's configuration, each with a documented default
   * (`.describe()` is the --help text). Every module's fields are merged into one schema.
   */
  config?: S;
  needs: N;
  provides?: Cell<P>;
  start(needs: Needed<N>, context: ModuleContext<CoreConfig & z.infer<z.ZodObject<S>>>): Promise<Started<P>> | Started<P>;
}

/** Checks a module's declaration against its types; the identity at run time. */
export function defineModule<N extends CellMap, P = void, S extends z.ZodRawShape = Record<never, never>>(module: AgentModule<N, P, S>): AgentModule<N, P, S> {
  return module;
}

export class ModuleError extends Error {
  readonly code: 'ERR_MODULE_GRAPH' | 'ERR_MODULE_START';
  readonly module: string;
  constructor(code: ModuleError['code'], module: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ModuleError';
    this.code = code;
    this.module = module;
  }
}

/**
 * Orders modules so each comes after the providers of what it needs, keeping the list's order
 * where the needs allow it. Refuses a need nobody provides, two providers of one cell, and cycles.
 */
export function orderModules(modules: readonly AgentModule[], given: ReadonlySet<string> = new Set()): AgentModule[] {
  const providers = new Map<string, AgentModule>();
  for (const module of modules) {
    if (!module.provides) continue;
    const other = providers.get(module.provides.name);
    if (other) throw new ModuleError('ERR_MODULE_GRAPH', module.name, `modules ${other.name} and ${module.name} both provide ${module.provides.name}`);
    providers.set(module.provides.name, module);
  }
  const ordered: AgentModule[] = [];
  const state = new Map<AgentModule, 'visiting' | 'done'>();
  const visit = (module: AgentModule, path: string[]): void => {
    const seen = state.get(module);
    if (seen === 'done') return;
    if (seen === 'visiting') throw new ModuleError('ERR_MODULE_GRAPH', module.name, `modules need each other in a cycle: ${[...path, module.name].join(' → ')}`);
    state.set(module, 'visiting');
    for (const need of Object.values(module.needs)) {
      if (given.has(need.name)) continue;
      const provider = providers.get(need.name);
      if (!provider) throw new ModuleError('ERR_MODULE_GRAPH', module.name, `module ${module.name} needs ${need.name}, which no module provides`);
      visit(provider, [...path, module.name]);
    }
    state.set(module, 'done');
    ordered.push(module);
  };
  for (const module of modules) visit(module, []);
  return ordered;
}

interface Running {
  module: AgentModule;
  started: Started<unknown>;
}

/** Started modules, their values and their health. */
export class ModuleHost {
  readonly #modules: AgentModule[];
  readonly #config: CoreConfig;
  readonly #log: Logger;
  /** The API every module adds its routes to; the api module serves it. */
  readonly api: ApiServer;
  readonly #values = new Map<string, unknown>();
  readonly #running: Running[] = [];
  #readyHooks: { module: string; hook: () => Promise<void> | void }[] = [];

  /**
   * `config` holds the shared settings and every module's (as the merged schema parsed them).
   * `apiCell` names the API server, which the host itself provides to every module.
   */
  constructor(modules: readonly AgentModule[], config: CoreConfig, log: Logger, apiCell: Cell<ApiServer>) {
    this.#modules = orderModules(modules, new Set([apiCell.name]));
    this.#config = config;
    this.#log = log;
    this.api = new ApiServer(log.child({ module: 'api' }));
    this.#values.set(apiCell.name, this.api);
  }

  /** Module names in start order. */
  get order(): string[] {
    return this.#modules.map((m) => m.name);
  }

  /** A started module's value; throws before its module has started. */
  get<T>(which: Cell<T>): T {
    if (!this.#values.has(which.name)) throw new ModuleError('ERR_MODULE_GRAPH', which.name, `${which.name} is not started`);
    return this.#values.get(which.name) as T;
  }

  async start(): Promise<void> {
    for (const module of this.#modules) {
      const began = performance.now();
      const log = this.#log.child({ module: module.name });
      const needs = Object.fromEntries(Object.entries(module.needs).map(([key, need]) => [key, this.#values.get(need.name)]));
      let started: Started<unknown>;
      try {
        started = await module.start(needs, {
          config: this.#config,
          log,
          api: this.api,
          onReady: (hook) => this.#readyHooks.push({ module: module.name, hook }),
          agentHealth: () => this.agentHealth(),
        });
      } catch (error) {
        await this.#failed(module.name, error);
      }
      this.#running.push({ module, started: started! });
      if (module.provides) this.#values.set(module.provides.name, started!.value);
      log.debug({ ms: +(performance.now() - began).toFixed(1) }, 'module started');
    }
    for (const { module, hook } of this.#readyHooks) {
      try {
        await hook();
      } catch (error) {
        await this.#failed(module, error);
      }
    }
  }

  async #failed(name: string, error: unknown): Promise<never> {
    this.#log.error({ module: name, err: error }, 'module failed to start; stopping the modules that started');
    await this.stop();
    throw new ModuleError('ERR_MODULE_START', name, `starting module ${name}: ${(error as Error).message ?? String(error)}`, { cause: error });
  }

  /** Stops the started modules in reverse order; a failing stop is logged and the rest still stop. */
  async stop(): Promise<void> {
    this.#readyHooks = [];
    while (this.#running.length > 0) {
      const { module, started } = this.#running.pop()!;
      try {
        await started.stop?.();
      } catch (error) {
        this.#log.error({ module: module.name, err: error }, 'module failed to stop; stopping the rest');
      }
      if (module.provides) this.#values.delete(module.provides.name);
    }
  }

  /** Each started module's health, in start order. */
  health(): { module: string; health: ModuleHealth }[] {
    return this.#running.filter((r) => r.started.health).map((r) => ({ module: r.module.name, health: r.started.health!() }));
  }

  /** Every started module's reconcilers, with the module's name. */
  reconcilers(): ReconcilerModuleHealth[] {
    return this.#running.flatMap((r) => (r.started.reconcilers?.() ?? []).map((health) => ({ module: r.module.name, ...health })));
  }

  /**
   * The agent's state: `degraded` while any module's health or reconciler is, each reason naming
   * its module; every reconciler's health.
   */
  agentHealth(): ReconcilerStatus {
    const reconcilers = this.reconcilers();
    const reasons = [
      ...this.health()
        .filter((h) => h.health.degraded)
        .map((h) => `${h.module}: ${h.health.reason ?? 'degraded'}`),
      ...reconcilers.filter((r) => r.degraded).map((r) => `${r.module}: ${r.reason ?? `${r.name} is degraded`}`),
    ];
    return { state: reasons.length > 0 ? 'degraded' : 'ok', reasons, reconcilers };
  }

  /** Every started module's status fields, in start order. */
  status(): Record<string, unknown> {
    const fields: Record<string, unknown> = {};
    for (const { started } of this.#running) if (started.status) Object.assign(fields, started.status());
    return fields;
  }
}
