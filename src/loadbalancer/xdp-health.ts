/**
 * Active health checks of the standalone load balancer: a TCP connect to each backend's health
 * port every interval. `fall` consecutive failures take a backend out, `rise` consecutive
 * successes put it back (HAProxy's and Katran's healthchecker's rule), so one lost SYN moves no
 * traffic.
 * @module
 */
import { connect } from 'node:net';

export interface HealthTarget {
  address: string;
  port: number;
}

export interface HealthOptions {
  intervalMs: number;
  timeoutMs: number;
  fall: number;
  rise: number;
  /** Called when a backend's health changes (by address: a backend failing on any port is out). */
  onChange: (address: string, healthy: boolean) => void;
}

/** Resolves true when a TCP connection to the target opens within `timeoutMs`. */
export function tcpCheck(target: HealthTarget, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: target.address, port: target.port });
    const done = (ok: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

export class HealthChecker {
  readonly #options: HealthOptions;
  #targets: HealthTarget[] = [];
  /** target key → consecutive results: positive successes, negative failures. */
  readonly #streak = new Map<string, number>();
  readonly #healthy = new Map<string, boolean>();
  #timer: NodeJS.Timeout | undefined;
  #running = false;

  constructor(options: HealthOptions) {
    this.#options = options;
  }

  /** Checks these targets from now on; a target dropped forgets its state. */
  setTargets(targets: readonly HealthTarget[]): void {
    this.#targets = [...targets];
    const keys = new Set(targets.map(targetKey));
    for (const key of [...this.#streak.keys()]) if (!keys.has(key)) this.#streak.delete(key);
    const addresses = new Set(targets.map((t) => t.address));
    for (const address of [...this.#healthy.keys()]) if (!addresses.has(address)) this.#healthy.delete(address);
  }

  start(): void {
    if (this.#timer) return;
    const tick = () => {
      void this.checkOnce().finally(() => {
        if (this.#timer) this.#timer = setTimeout(tick, this.#options.intervalMs);
      });
    };
    this.#timer = setTimeout(tick, 0);
  }

  stop(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** One round of checks of every target, at once. */
  async checkOnce(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    try {
      const targets = this.#targets;
      const results = await Promise.all(targets.map((t) => tcpCheck(t, this.#options.timeoutMs)));
      const byAddress = new Map<string, boolean>();
      targets.forEach((target, i) => {
        const key = targetKey(target);
        const prev = this.#streak.get(key) ?? 0;
        const streak = results[i] ? Math.max(prev, 0) + 1 : Math.min(prev, 0) - 1;
        this.#streak.set(key, streak);
        const was = this.#healthy.get(target.address) ?? true;
        const now = was ? streak > -this.#options.fall : streak >= this.#options.rise;
        byAddress.set(target.address, (byAddress.get(target.address) ?? true) && now);
      });
      for (const [address, healthy] of byAddress) {
        if ((this.#healthy.get(address) ?? true) === healthy) continue;
        this.#healthy.set(address, healthy);
        this.#options.onChange(address, healthy);
      }
    } finally {
      this.#running = false;
    }
  }
}

function targetKey(target: HealthTarget): string {
  return `${target.address}:${target.port}`;
}
