/**
 * Test harness: bpf/lib/policy.h's policy_can_access, run in the kernel through
 * BPF_PROG_TEST_RUN on build/bpf/policy_lookup.o (src/ebpf/testdata/policy_lookup.c), over a
 * real LPM trie loaded with the engine's entries.
 */
import { join } from 'node:path';
import { BpfObject, type BpfMap } from '../../ebpf/index.ts';
import {
  applyPolicyDiff,
  encodeEntry,
  encodeKey,
  policyEntryCodec,
  policyKeyCodec,
  policyResultCodec,
  type PolicyEntryValue,
  type PolicyKeyValue,
  type PolicyMapEntry,
  type PolicyKey,
} from '../policy-map.ts';

export const POLICY_LOOKUP_OBJECT = join(import.meta.dirname, '../../../build/bpf/policy_lookup.o');

export interface BpfLookupResult {
  verdict: number;
  match: number;
  cookie: number;
  prefixLen: number;
}

export class BpfPolicyLookup implements Disposable {
  readonly obj: BpfObject;
  readonly map: BpfMap<PolicyKeyValue, PolicyEntryValue>;
  readonly #packet = Buffer.alloc(14 + 8 + policyResultCodec.size);

  constructor() {
    this.obj = BpfObject.load(POLICY_LOOKUP_OBJECT);
    this.map = this.obj.map('policy_test_map').withCodecs(policyKeyCodec, policyEntryCodec);
  }

  clear(): void {
    for (const k of [...this.map.keys()]) this.map.delete(k);
  }

  /** Replaces the map's contents with `entries`. */
  load(entries: Iterable<PolicyMapEntry>): void {
    this.clear();
    for (const e of entries) this.map.update(encodeKey(e.key), encodeEntry(e));
  }

  apply(diff: { upserts: readonly PolicyMapEntry[]; deletes: readonly PolicyKey[] }): void {
    applyPolicyDiff(this.map, diff);
  }

  count(): number {
    let n = 0;
    for (const _ of this.map.keys()) n++;
    return n;
  }

  query(identity: number, direction: number, protocol: number, port: number): BpfLookupResult {
    const p = this.#packet;
    p.fill(0);
    p.writeUInt16BE(0x0800, 12);
    p.writeUInt32LE(identity >>> 0, 14);
    p.writeUInt8(direction, 18);
    p.writeUInt8(protocol, 19);
    p.writeUInt16LE(port, 20);
    const run = this.obj.program('policy_lookup').testRun({ data: p });
    const r = policyResultCodec.decode(run.data, 22);
    if (run.returnValue !== r.verdict) throw new Error(`policy_lookup returned ${run.returnValue}, result says ${r.verdict}`);
    return { verdict: r.verdict, match: r.match_type, cookie: r.cookie, prefixLen: r.prefix_len };
  }

  close(): void {
    this.obj.close();
  }
  [Symbol.dispose](): void {
    this.close();
  }
}
