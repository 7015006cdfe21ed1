/**
 * One node's agent: a list of modules (src/agent/modules) started in the order their needs give,
 * stopped in reverse. Killing the agent leaves the datapath running (maps and links are pinned);
 * starting it again adopts what it finds.
 * @module
 */
import type { Logger } from 'pino';
import type { EndpointManager } from './endpoint-manager.ts';
import { ModuleHost, type AgentModule } from './module.ts';
import type { ReconcilerStatus } from './reconciler-status.ts';
import { AGENT_MODULES, ApiServerCell, type AgentConfig } from './modules/index.ts';
import { EndpointsCell } from './modules/cells.ts';
import { VERSION } from './version.ts';

export type AgentState = ReconcilerStatus['state'];

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

  /**
   * The agent's state (`degraded` while any module's health or reconciler is, each reason naming
   * its module), every module's status fields and every reconciler's health.
   */
  status() {
    const { state, reasons, reconcilers } = this.#host.agentHealth();
    return {
      node: this.config.nodeName,
      version: VERSION,
      uptimeSeconds: Math.round((Date.now() - this.startedAt) / 1000),
      state,
      reasons,
      ...this.#host.status(),
      reconcilers,
    };
  }

  async start(): Promise<void> {
    await this.#host.start();
  }

  async stop(): Promise<void> {
    await this.#host.stop();
  }
}
