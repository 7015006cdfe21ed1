/**
 * MurmurHash3 x64 128-bit (Austin Appleby's public-domain algorithm), the hash Cilium's Maglev
 * derives each backend's offset and skip from. Only the control plane hashes with it, once per
 * backend per table build, so BigInt arithmetic is fast enough and keeps the code plainly the
 * algorithm.
 * @module
 */

const MASK64 = (1n << 64n) - 1n;
const C1 = 0x87c37b91114253d5n;
const C2 = 0x4cf5ad432745937fn;

function rotl64(x: bigint, r: bigint): bigint {
  return ((x << r) | (x >> (64n - r))) & MASK64;
}

function fmix64(k: bigint): bigint {
  k ^= k >> 33n;
  k = (k * 0xff51afd7ed558ccdn) & MASK64;
  k ^= k >> 33n;
  k = (k * 0xc4ceb9fe1a85ec53n) & MASK64;
  k ^= k >> 33n;
  return k;
}

function mixK1(k1: bigint): bigint {
  k1 = (k1 * C1) & MASK64;
  k1 = rotl64(k1, 31n);
  return (k1 * C2) & MASK64;
}

function mixK2(k2: bigint): bigint {
  k2 = (k2 * C2) & MASK64;
  k2 = rotl64(k2, 33n);
  return (k2 * C1) & MASK64;
}

/** The little-endian 64-bit word of `data` at `offset`, over at most `length` bytes (a tail). */
function word(data: Uint8Array, offset: number, length = 8): bigint {
  let value = 0n;
  for (let i = Math.min(length, 8) - 1; i >= 0; i--) value = (value << 8n) | BigInt(data[offset + i]);
  return value;
}

/**
 * The two 64-bit halves of MurmurHash3_x64_128 of `data` with a 32-bit `seed`.
 *
 * @example
 * murmur3x64_128(Buffer.from('hello')); // [0xcbd8a7b341bd9b02n, 0x5b1e906a48ae1d19n]
 */
export function murmur3x64_128(data: Uint8Array, seed = 0): [h1: bigint, h2: bigint] {
  const length = data.length;
  const blocks = Math.floor(length / 16);
  let h1 = BigInt(seed >>> 0);
  let h2 = h1;
  for (let i = 0; i < blocks; i++) {
    const k1 = word(data, i * 16);
    const k2 = word(data, i * 16 + 8);
    h1 ^= mixK1(k1);
    h1 = rotl64(h1, 27n);
    h1 = (h1 + h2) & MASK64;
    h1 = (h1 * 5n + 0x52dce729n) & MASK64;
    h2 ^= mixK2(k2);
    h2 = rotl64(h2, 31n);
    h2 = (h2 + h1) & MASK64;
    h2 = (h2 * 5n + 0x38495ab5n) & MASK64;
  }
  const tail = blocks * 16;
  const rest = length - tail;
  if (rest > 8) h2 ^= mixK2(word(data, tail + 8, rest - 8));
  if (rest > 0) h1 ^= mixK1(word(data, tail, rest));
  h1 ^= BigInt(length);
  h2 ^= BigInt(length);
  h1 = (h1 + h2) & MASK64;
  h2 = (h2 + h1) & MASK64;
  h1 = fmix64(h1);
  h2 = fmix64(h2);
  h1 = (h1 + h2) & MASK64;
  h2 = (h2 + h1) & MASK64;
  return [h1, h2];
}
