/**
 * A binary trie of CIDR prefixes (one per family) holding a set of values at each stored prefix,
 * for the two questions the selector cache asks of CIDRs: which stored prefixes contain this one
 * (a new CIDR identity looking for the CIDR selectors that select it), and which lie inside it (a
 * new CIDR selector looking for the identities it selects). Both walk at most the prefix length
 * (32 or 128 steps) plus, for `within`, the part of the trie below the prefix, so neither depends
 * on how many other prefixes are stored.
 * @module
 */
import type { Cidr } from './cidr.ts';

interface TrieNode<T> {
  zero: TrieNode<T> | undefined;
  one: TrieNode<T> | undefined;
  /** Values stored at exactly this prefix; undefined while there are none. */
  values: Set<T> | undefined;
}

const newNode = <T>(): TrieNode<T> => ({ zero: undefined, one: undefined, values: undefined });

/** The network address as 32-bit words, most significant first: bit tests on numbers, not bigints. */
function words(prefix: Cidr): number[] {
  if (prefix.addr.is4()) return [prefix.addr.toUint32()];
  const network = prefix.addr.toBigInt();
  const out: number[] = [];
  for (let shift = 96n; shift >= 0n; shift -= 32n) out.push(Number((network >> shift) & 0xffffffffn));
  return out;
}

/** Bit `i` (0 = most significant) of the address in `w`. */
function bit(w: readonly number[], i: number): number {
  return (w[i >>> 5] >>> (31 - (i & 31))) & 1;
}

export class PrefixTrie<T> {
  readonly #roots: Record<4 | 6, TrieNode<T>> = { 4: newNode(), 6: newNode() };

  add(prefix: Cidr, value: T): void {
    const w = words(prefix);
    let node = this.#roots[prefix.family];
    for (let i = 0; i < prefix.bits; i++) {
      if (bit(w, i) === 0) node = node.zero ??= newNode();
      else node = node.one ??= newNode();
    }
    (node.values ??= new Set()).add(value);
  }

  /** Removes `value` from `prefix`; nodes left without values or children are pruned. */
  delete(prefix: Cidr, value: T): boolean {
    const w = words(prefix);
    const path: TrieNode<T>[] = [this.#roots[prefix.family]];
    for (let i = 0; i < prefix.bits; i++) {
      const next = bit(w, i) === 0 ? path[i].zero : path[i].one;
      if (next === undefined) return false;
      path.push(next);
    }
    const node = path[prefix.bits];
    if (!node.values?.delete(value)) return false;
    if (node.values.size === 0) node.values = undefined;
    for (let i = prefix.bits; i > 0; i--) {
      const n = path[i];
      if (n.values !== undefined || n.zero !== undefined || n.one !== undefined) break;
      if (bit(w, i - 1) === 0) path[i - 1].zero = undefined;
      else path[i - 1].one = undefined;
    }
    return true;
  }

  /**
   * Values of every stored prefix that contains `prefix` (itself included), as
   * [prefix length, values] pairs from the shortest prefix to the longest.
   */
  containing(prefix: Cidr): [number, ReadonlySet<T>][] {
    const w = words(prefix);
    const out: [number, ReadonlySet<T>][] = [];
    let node: TrieNode<T> | undefined = this.#roots[prefix.family];
    for (let i = 0; node !== undefined; i++) {
      if (node.values !== undefined) out.push([i, node.values]);
      if (i === prefix.bits) break;
      node = bit(w, i) === 0 ? node.zero : node.one;
    }
    return out;
  }

  /** Values of every stored prefix inside `prefix` (itself included), in no particular order. */
  within(prefix: Cidr): T[] {
    const w = words(prefix);
    let node: TrieNode<T> | undefined = this.#roots[prefix.family];
    for (let i = 0; i < prefix.bits && node !== undefined; i++) node = bit(w, i) === 0 ? node.zero : node.one;
    const out: T[] = [];
    // Iterative: a /0 over a full IPv6 trie is 128 levels deep.
    const stack = node === undefined ? [] : [node];
    for (let n = stack.pop(); n !== undefined; n = stack.pop()) {
      if (n.values !== undefined) for (const v of n.values) out.push(v);
      if (n.one !== undefined) stack.push(n.one);
      if (n.zero !== undefined) stack.push(n.zero);
    }
    return out;
  }
}
