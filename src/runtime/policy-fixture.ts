/**
 * What the TracingPolicy tests share: one running observer per test file, a temporary directory,
 * policies removed after each test, and the events of one policy as they reached user space.
 * @module
 */
import type { TestContext } from 'node:test';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RuntimeObserver } from './runtime-observer.ts';
import type { TetragonEvent, TetragonProcessKprobe } from './types.ts';

export class PolicyFixture {
  readonly observer = new RuntimeObserver({ nodeName: 'test-node' });
  /** World-readable, so that callers running as nobody can reach its files. */
  readonly dir: string;
  readonly events: TetragonEvent[] = [];

  constructor(prefix: string) {
    this.dir = mkdtempSync(join(tmpdir(), prefix));
    try {
      chmodSync(this.dir, 0o755);
      this.observer.start();
    } catch (error) {
      // No fixture to close: leave nothing behind here.
      rmSync(this.dir, { recursive: true, force: true });
      throw error;
    }
    this.observer.subscribe((event) => this.events.push(event));
  }

  close(): void {
    this.observer.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** A file of the directory, readable by all. */
  tempFile(name: string): string {
    const path = join(this.dir, name);
    writeFileSync(path, 'x\n');
    chmodSync(path, 0o644);
    return path;
  }

  /** Loads a policy for the rest of the test; returns its name. */
  addPolicy(t: TestContext, yaml: string): string {
    const status = this.observer.policies.add(yaml);
    t.after(() => {
      if (this.observer.policies.get(status.name)) this.observer.policies.delete(status.name);
    });
    return status.name;
  }

  /** The process_kprobe events of `policy` that reached user space so far. */
  kprobesOf(policy: string): TetragonProcessKprobe[] {
    this.observer.drain();
    return this.events.flatMap((e) => ('process_kprobe' in e && e.process_kprobe.policy_name === policy ? [e.process_kprobe] : []));
  }
}

export const uniqueName = (prefix: string): string => `${prefix}-${randomBytes(4).toString('hex')}`;
