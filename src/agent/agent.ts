/**
 * One node's agent: a list of modules (src/agent/modules) started in the order their needs give,
 * stopped in reverse. Killing the agent leaves the datapath running (maps and links are pinned);
 * starting it again adopts what it finds.
 * @module
 */
import type { Logger } from 'pino';
import type { EndpointManager } from './endpoint-manager.ts';
import { ModuleHost, type AgentModule, type ModuleHealth } from './module.ts';
import { AGENT_MODULES, ApiServerCell, type AgentConfig } from './modules/index.ts';
import { EndpointsCell } from './modules/cells.ts';
import { VERSION } from './version.ts';

export type AgentState = 'ok' | 'degraded';

export class Agent {
  readonly config: AgentConfig;
  readonly log: Logger;
  readonly startedAt = Date.now();
  readonly #host: ModuleHost;

  constructor(config: AgentConfig, log: Logger, modules: readonly AgentModule[] = AGENT_MODULES) {
    this.config = config;
    this.log = log;
    this.#host = new ModuleHost(modules, config, log, ApiServerCell);
    this.#host.api.route('GET', '/v1/healthz', () => ({ ok: true }));
    this.#host.api.route('GET', '/v1/status', () => this.status());
  }

  /** Module names in the order they start. */
  get modules(): string[] {
    return this.#host.order;
  }

  get endpoints(): EndpointManager {
    return this.#host.get(EndpointsCell);
  }

  status() {
    const health = this.#host.health();
    const degraded = health.filter((h) => h.health.degraded);
    return {
      node: this.config.nodeName,
      version: VERSION,
      uptimeSeconds: Math.round((Date.now() - this.startedAt) / 1000),
      state: (degraded.length > 0 ? 'degraded' : 'ok') as AgentState,
      ...(degraded.length > 0 ? { degraded: degraded.map((h) => `${h.module}: ${h.health.reason ?? 'degraded'}`) } : {}),
      ...this.#host.status(),
      modules: Object.fromEntries(health.map((h): [string, ModuleHealth] => [h.module, h.health])),
    };
  }

  async start(): Promise<void> {
    await this.#host.start();
  }

  async stop(): Promise<void> {
    await this.#host.stop();
  }
}
