/**
 * Policy revisions cluster-wide. Every agent publishes the store revision its policy manager
 * enforces as `policy-status/<node>`, and a cluster `policy wait` returns once every node
 * registered under `nodes/` has published the revision (or a later one).
 *
 * The status is a key of its own rather than a field of the node record: every node follows the
 * node records and reprograms routing on each change of one. It is written only when the value
 * changes, at most once per COALESCE_MS, so a burst of policy changes costs one write per node.
 *
 * A node's revision moves only when policy or identities change (or a listing shows nothing did),
 * while the revision waited for may lie past the last change, so a node cannot know by itself that
 * it already enforces it. A waiter that still sees nodes lag after a moment writes
 * `policy-wait/<its node>`, and each lagging node runs its own catch-up for that revision and
 * publishes what it reaches.
 * @module
 */
import { setTimeout as delay } from 'node:timers/promises';
import type { Logger } from 'pino';
import { z } from 'zod';
import type { StateStore } from '../store/index.ts';
import { NODES_PREFIX, nodeNameOfKey, type NodeRecord } from './node.ts';
import type { PolicyManager } from './policy-manager.ts';

export const POLICY_STATUS_PREFIX = 'policy-status/';
export const POLICY_WAIT_PREFIX = 'policy-wait/';

/** The value of `policy-status/<node>`. */
export interface PolicyStatusRecord {
  /** Store revision up to which the node enforces policy on all its endpoints. */
  revision: number;
  /** The agent run that published it: the node record's `startedAt`. */
  startedAt: string;
}

const PolicyWaitRequest = z.object({ revision: z.number().int().nonnegative(), timeoutMs: z.number().nonnegative() });
type PolicyWaitRequest = z.infer<typeof PolicyWaitRequest>;

/** One registered node and the revision it enforces; undefined when its agent has published none. */
export interface NodePolicyRevision {
  node: string;
  revision: number | undefined;
}

interface NodesListing {
  /** The lower store revision of the two listings it is made of. */
  listedAt: number;
  nodes: NodePolicyRevision[];
}

export interface ClusterWaitResult {
  enforced: boolean;
  /** Every node registered in the store when the wait ended. */
  nodes: NodePolicyRevision[];
}

const COALESCE_MS = 50;
const RETRY_MS = 1000;
/** Most waits are satisfied by what nodes publish on their own; only then does a waiter ask. */
const REQUEST_AFTER_MS = 200;
/** A waiter rereads the statuses at least this often, should a watch have ended. */
const RECHECK_MS = 1000;
/** A node chases a requested revision no longer than this, whatever the waiter's timeout. */
const MAX_CHASE_MS = 10 * 60_000;

/** Whether a node lags behind `revision`. */
export function lags(node: NodePolicyRevision, revision: number): boolean {
  return node.revision === undefined || node.revision < revision;
}

export class PolicyStatus {
  readonly #store: StateStore;
  readonly #nodeName: string;
  readonly #startedAt: string;
  readonly #policy: PolicyManager;
  readonly #log: Logger;
  readonly #abort = new AbortController();
  #unsubscribe: (() => void) | undefined;
  #timer: NodeJS.Timeout | undefined;
  #flushing: Promise<void> | undefined;
  #flushAgain = false;
  #published: number | undefined;
  /** The highest revision a catch-up runs for on a waiter's request. */
  #chasing = 0;
  readonly #tasks = new Set<Promise<unknown>>();

  constructor(options: { store: StateStore; nodeName: string; startedAt: string; policy: PolicyManager; log: Logger }) {
    this.#store = options.store;
    this.#nodeName = options.nodeName;
    this.#startedAt = options.startedAt;
    this.#policy = options.policy;
    this.#log = options.log;
  }

  /** Publishes now and on every change from here on, and answers waiters' requests. */
  start(): void {
    this.#unsubscribe = this.#policy.onChange(() => this.#schedule(COALESCE_MS));
    this.#schedule(0);
    this.#track(this.#followRequests());
  }

  async stop(): Promise<void> {
    this.#abort.abort();
    this.#unsubscribe?.();
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await Promise.allSettled([...this.#tasks, this.#flushing]);
  }

  /** The last revision this agent published (undefined before the first write). */
  get published(): number | undefined {
    return this.#published;
  }

  #track(task: Promise<unknown>): void {
    this.#tasks.add(task);
    void task.finally(() => this.#tasks.delete(task));
  }

  #schedule(delayMs: number): void {
    if (this.#abort.signal.aborted || this.#timer !== undefined) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#flush();
    }, delayMs);
    // A pending publish must not keep a stopping process alive.
    this.#timer.unref();
  }

  #flush(): void {
    if (this.#flushing) {
      this.#flushAgain = true;
      return;
    }
    this.#flushing = this.#publish().finally(() => {
      this.#flushing = undefined;
      if (this.#flushAgain) {
        this.#flushAgain = false;
        this.#schedule(COALESCE_MS);
      }
    });
  }

  async #publish(): Promise<void> {
    try {
      await this.#policy.settle();
    } catch (error) {
      // What the node has reached is still worth publishing; a later change settles again.
      this.#log.warn({ err: error }, 'listing identities to settle the policy revision failed');
    }
    const revision = this.#policy.enforcedNodeRevision();
    if (revision === this.#published || this.#abort.signal.aborted) return;
    try {
      await this.#store.put<PolicyStatusRecord>(`${POLICY_STATUS_PREFIX}${this.#nodeName}`, { revision, startedAt: this.#startedAt });
      this.#published = revision;
      this.#log.debug({ revision }, 'published the policy revision this node enforces');
    } catch (error) {
      this.#log.warn({ err: error, revision }, 'publishing the policy revision failed; retrying');
      this.#schedule(RETRY_MS);
    }
  }

  /** Waiters' requests, from now on: each makes this node catch up to the revision asked for. */
  async #followRequests(): Promise<void> {
    while (!this.#abort.signal.aborted) {
      try {
        for await (const event of this.#store.watch<unknown>(POLICY_WAIT_PREFIX, { signal: this.#abort.signal })) {
          // This node's own waits catch up by themselves.
          if (event.type !== 'put' || event.key === `${POLICY_WAIT_PREFIX}${this.#nodeName}`) continue;
          const request = PolicyWaitRequest.safeParse(event.value);
          if (request.success) this.#chase(request.data);
          else this.#log.warn({ key: event.key }, 'ignoring a malformed policy wait request');
        }
      } catch (error) {
        if (this.#abort.signal.aborted) return;
        this.#log.warn({ err: error }, 'watching policy wait requests failed; watching again');
      }
      await delay(RETRY_MS, undefined, { signal: this.#abort.signal }).catch(() => undefined);
    }
  }

  #chase(request: PolicyWaitRequest): void {
    if (this.#policy.enforces(request.revision) || request.revision <= this.#chasing) {
      // Enforced already, though perhaps not published yet (the flush is a no-op if it is).
      this.#schedule(COALESCE_MS);
      return;
    }
    this.#chasing = request.revision;
    this.#track(
      this.#policy.waitFor(request.revision, Math.min(request.timeoutMs, MAX_CHASE_MS), this.#abort.signal).then(() => {
        if (this.#chasing === request.revision) this.#chasing = 0;
        this.#schedule(0);
      }),
    );
  }

  /**
   * Every registered node with the revision it enforces: this node's from its policy manager,
   * the others' from their published status (one an earlier run of their agent published does
   * not count).
   */
  async nodes(): Promise<NodesListing> {
    const [records, statuses] = await Promise.all([this.#store.list<NodeRecord>(NODES_PREFIX), this.#store.list<PolicyStatusRecord>(POLICY_STATUS_PREFIX)]);
    const byNode = new Map(statuses.entries.map((e) => [e.key.slice(POLICY_STATUS_PREFIX.length), e.value]));
    const nodes = records.entries.map(({ key, value }): NodePolicyRevision => {
      const node = nodeNameOfKey(key);
      if (node === this.#nodeName) return { node, revision: this.#policy.enforcedNodeRevision() };
      const status = byNode.get(node);
      return { node, revision: status !== undefined && status.startedAt === value.startedAt ? status.revision : undefined };
    });
    return { listedAt: Math.min(records.revision, statuses.revision), nodes };
  }

  /**
   * Resolves once every node registered in the store enforces `revision`, or with the nodes
   * that lag after `timeoutMs` or when `signal` aborts. A node whose record is deleted no longer
   * counts, also in the middle of a wait.
   */
  async waitForCluster(revision: number, timeoutMs: number, signal?: AbortSignal): Promise<ClusterWaitResult> {
    const began = Date.now();
    const deadline = began + timeoutMs;
    const abort = new AbortController();
    const onAbort = (): void => abort.abort();
    signal?.addEventListener('abort', onAbort, { once: true });
    const wake = new Wakeup();
    // This node's own catch-up (see PolicyManager.waitFor), running meanwhile.
    const tasks: Promise<unknown>[] = [this.#policy.waitFor(revision, timeoutMs, abort.signal).then(() => wake.ring())];
    let watching = false;
    let requested = false;
    try {
      for (;;) {
        let listing: NodesListing;
        try {
          listing = await this.nodes();
        } catch (error) {
          // The store may be briefly unreachable (an etcd leader change): try again until the deadline.
          if (Date.now() >= deadline || abort.signal.aborted) throw error;
          this.#log.warn({ err: error, revision }, 'policy wait: reading the nodes and their revisions failed; retrying');
          await wake.wait(Math.min(RECHECK_MS, deadline - Date.now()));
          continue;
        }
        const { listedAt, nodes } = listing;
        const lagging = nodes.filter((n) => lags(n, revision));
        const now = Date.now();
        if (lagging.length === 0 || now >= deadline || abort.signal.aborted) return { enforced: lagging.length === 0, nodes };
        if (!watching) {
          watching = true;
          for (const prefix of [NODES_PREFIX, POLICY_STATUS_PREFIX]) tasks.push(this.#ringOnChange(prefix, listedAt, abort.signal, wake));
        }
        if (!requested && now - began >= REQUEST_AFTER_MS && lagging.some((n) => n.node !== this.#nodeName)) {
          requested = true;
          // Failing to ask only slows nodes whose revision lies past their last change.
          await this.#store
            .put<PolicyWaitRequest>(`${POLICY_WAIT_PREFIX}${this.#nodeName}`, { revision, timeoutMs: deadline - now })
            .catch((error: unknown) => this.#log.warn({ err: error, revision }, 'policy wait: asking the other nodes to catch up failed'));
          continue;
        }
        const untilRequest = requested ? Infinity : began + REQUEST_AFTER_MS - now;
        await wake.wait(Math.max(0, Math.min(deadline - now, RECHECK_MS, untilRequest)));
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      abort.abort();
      await Promise.allSettled(tasks);
    }
  }

  async #ringOnChange(prefix: string, afterRevision: number, signal: AbortSignal, wake: Wakeup): Promise<void> {
    try {
      for await (const _ of this.#store.watch(prefix, { afterRevision, signal })) wake.ring();
    } catch (error) {
      // The periodic reread carries the wait on.
      if (!signal.aborted) this.#log.debug({ err: error, prefix }, 'policy wait: watch ended');
    }
  }
}

/** A wakeup that is not lost when it comes while nobody waits. */
class Wakeup {
  #rung = false;
  #resolve: (() => void) | undefined;

  ring(): void {
    this.#rung = true;
    this.#resolve?.();
  }

  /** Resolves at the next ring (at once if one came since the last wait) or after `ms`. */
  async wait(ms: number): Promise<void> {
    if (!this.#rung) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, ms);
        this.#resolve = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#resolve = undefined;
    }
    this.#rung = false;
  }
}

/** "n2 (at revision 41), n3 (no revision published)": the nodes that lag behind `revision`. */
export function describeLagging(nodes: readonly NodePolicyRevision[], revision: number): string {
  return nodes
    .filter((n) => lags(n, revision))
    .map((n) => `${n.node} (${n.revision === undefined ? 'no revision published' : `at revision ${n.revision}`})`)
    .join(', ');
}
