/**
 * What the agent and its proxy process tell each other over the IPC channel (plain JSON).
 * @module
 */
import type { L7HttpRecord } from '../observer/index.ts';
import type { PolicyMapEntry } from '../policy/index.ts';

/**
 * Everything the proxy judges with, sent whole on every change: the local endpoints' identities
 * (the datapath redirects only connections from local pods, whose source addresses it has
 * checked) and, per endpoint with L7 rules, its ingress policy entries that carry them.
 */
export interface ProxyState {
  /** The agent's policy revision this state reflects. */
  revision: number;
  /** [address, identity] of every local endpoint. */
  identities: [string, number][];
  /** Per local endpoint with ingress L7 rules: its ingress entries that carry them (by its address). */
  policies: { address: string; entries: PolicyMapEntry[] }[];
  /** Per local endpoint with egress L7 rules: its egress entries that carry them (by its address). */
  egress?: { address: string; entries: PolicyMapEntry[] }[];
  /**
   * [CIDR, identity] of the ipcache's prefixes that are not a pod's (CIDR identities of toCIDR and
   * toFQDNs): how an egress rule's destination outside the cluster is named. Else world.
   */
  prefixes?: [string, number][];
}

export type ToProxy = { type: 'state'; state: ProxyState };

export type FromProxy =
  | { type: 'ready'; port: number }
  | { type: 'records'; records: WireRecords; lost: number }
  | { type: 'fatal'; message: string };

/**
 * A batch of L7HttpRecords as it crosses the IPC channel: each string once (`strings`), each record
 * a row of numbers (string indexes, -1: absent). The records of one batch repeat the same
 * addresses, URLs and rule keys; as objects, their JSON (keys, nested source and destination) cost
 * the proxy to write and the agent to parse about as much as proxying a request.
 */
export interface WireRecords {
  strings: string[];
  /** Per record, WIRE_FIELDS long; rule key lists are string indexes each. */
  rows: (number | string | number[])[][];
}

const KINDS = ['REQUEST', 'RESPONSE'] as const;
const VERDICTS = ['FORWARDED', 'DROPPED'] as const;
const DIRECTIONS = [undefined, 'EGRESS', 'INGRESS'] as const;

/** Collects records into one WireRecords batch. */
export class WireRecordsWriter {
  #strings: string[] = [];
  #index = new Map<string, number>();
  #rows: WireRecords['rows'] = [];

  get size(): number {
    return this.#rows.length;
  }

  add(r: L7HttpRecord): void {
    const { source: src, destination: dst } = r;
    this.#rows.push([
      KINDS.indexOf(r.kind), r.timeNs, VERDICTS.indexOf(r.verdict),
      this.#string(src.address), src.port, src.identity, this.#string(dst.address), dst.port, dst.identity,
      this.#string(r.method), this.#string(r.url), this.#string(r.protocol), r.code ?? -1, r.latencyNs ?? -1,
      this.#keys(r.ruleKeys), DIRECTIONS.indexOf(r.direction), this.#keys(r.ingressRuleKeys),
    ]);
  }

  #string(value: string): number {
    let at = this.#index.get(value);
    if (at === undefined) this.#index.set(value, (at = this.#strings.push(value) - 1));
    return at;
  }

  #keys(list: string[] | undefined): number | number[] {
    if (list === undefined) return -1;
    const out: number[] = [];
    for (const key of list) out.push(this.#string(key));
    return out;
  }

  /** The batch so far, and a new one begun. */
  take(): WireRecords {
    const out = { strings: this.#strings, rows: this.#rows };
    this.#strings = [];
    this.#index = new Map();
    this.#rows = [];
    return out;
  }
}

/** The records of a WireRecords batch, as the proxy emitted them. */
export function readWireRecords(wire: WireRecords): L7HttpRecord[] {
  const str = wire.strings;
  const keys = (list: number | string | number[]) => (Array.isArray(list) ? list.map((i) => str[i]) : undefined);
  return wire.rows.map((row) => {
    const [kind, timeNs, verdict, src, sport, sid, dst, dport, did, method, url, protocol, code, latencyNs, ruleKeys, direction, ingressRuleKeys] = row as [number, string, number, number, number, number, number, number, number, number, number, number, number, number, number | number[], number, number | number[]];
    const r: L7HttpRecord = {
      kind: KINDS[kind], timeNs, verdict: VERDICTS[verdict],
      source: { address: str[src], port: sport, identity: sid },
      destination: { address: str[dst], port: dport, identity: did },
      method: str[method], url: str[url], protocol: str[protocol],
    };
    if (code !== -1) r.code = code;
    if (latencyNs !== -1) r.latencyNs = latencyNs;
    const allowed = keys(ruleKeys);
    if (allowed) r.ruleKeys = allowed;
    if (DIRECTIONS[direction]) r.direction = DIRECTIONS[direction];
    const ingress = keys(ingressRuleKeys);
    if (ingress) r.ingressRuleKeys = ingress;
    return r;
  });
}
