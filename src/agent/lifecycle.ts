/**
 * Start and stop hooks, run in the order modules registered them and undone in reverse, as
 * Cilium's hive does. A failed start stops what had already started.
 * @module
 */
import type { Logger } from 'pino';

export interface Hook {
  name: string;
  start?(): Promise<void> | void;
  stop?(): Promise<void> | void;
}

export class Lifecycle {
  readonly #hooks: Hook[] = [];
  readonly #started: Hook[] = [];
  readonly #log: Logger;

  constructor(log: Logger) {
    this.#log = log;
  }

  append(hook: Hook): void {
    this.#hooks.push(hook);
  }

  async start(): Promise<void> {
    for (const hook of this.#hooks) {
      const began = performance.now();
      try {
        await hook.start?.();
      } catch (error) {
        this.#log.error({ hook: hook.name, err: error }, 'start hook failed; stopping what already started');
        await this.stop();
        throw error;
      }
      this.#started.push(hook);
      this.#log.debug({ hook: hook.name, ms: +(performance.now() - began).toFixed(1) }, 'started');
    }
  }

  async stop(): Promise<void> {
    while (this.#started.length > 0) {
      const hook = this.#started.pop()!;
      try {
        await hook.stop?.();
      } catch (error) {
        this.#log.error({ hook: hook.name, err: error }, 'stop hook failed; continuing');
      }
    }
  }
}
