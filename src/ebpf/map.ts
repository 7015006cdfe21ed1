/**
 * BPF maps: create, open pinned, typed lookup/update/delete, batch operations and iteration.
 * Hot-path calls reuse one attr buffer per map whose key and value pointers never change.
 * @module
 */
import { readFileSync } from 'node:fs';
import { BpfError, errorFromErrno } from './errors.ts';
import { bytes, type Codec } from './codec.ts';
import { BpfCommand, Errno, MapType, UpdateFlag } from './internal/constants.ts';
import { GetFdByIdAttr, InfoAttr, MapBatchAttr, MapCreateAttr, MapElemAttr, MapInfo, ObjAttr } from './internal/attr.ts';
import { addressOf, bpf, bpfAsync, bpfRaw, close, cString } from './internal/sys.ts';

export interface MapSpec {
  type: MapType;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags?: number;
  /** Up to 15 characters; shown by bpftool. */
  name?: string;
  /** For hash/array of maps: a map of the kind every inner map will be. */
  innerMap?: BpfMap<unknown, unknown>;
  /** Bloom filter hash count and similar per-type extras. */
  mapExtra?: bigint;
}

export interface MapInfoData {
  type: MapType;
  id: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
  name: string;
}

const PER_CPU_TYPES = new Set<number>([MapType.PERCPU_HASH, MapType.PERCPU_ARRAY, MapType.LRU_PERCPU_HASH]);
const KEYLESS_TYPES = new Set<number>([MapType.QUEUE, MapType.STACK, MapType.BLOOM_FILTER]);

/** Map types whose kernel implementation has batch operations; others are updated one by one. */
const BATCH_TYPES = new Set<number>([
  MapType.HASH, MapType.PERCPU_HASH, MapType.LRU_HASH, MapType.LRU_PERCPU_HASH, MapType.ARRAY, MapType.PERCPU_ARRAY,
]);
function batchSupported(type: MapType): boolean {
  return BATCH_TYPES.has(type);
}

/**
 * Whether a failed batch call means the operation is missing rather than that an element failed.
 * The kernel writes the processed count back only once it has started on the elements; without
 * the operation it fails before that, leaving our count as it was: ENOTSUPP for map types lacking
 * it (prog arrays, devmaps), EINVAL for kernels without the command.
 */
function batchMissing(type: MapType, ret: number, attr: Buffer, count: number): boolean {
  if (attr.readUInt32LE(MapBatchAttr.count) !== count) return false;
  return ret === -Errno.ENOTSUP || ret === -Errno.ENOTSUPP_KERNEL || (ret === -Errno.EINVAL && !batchSupported(type));
}

/** Elements a failed batch call processed: 0 when it failed before starting (count left as given). */
function batchDone(attr: Buffer, count: number): number {
  const done = attr.readUInt32LE(MapBatchAttr.count);
  return done === count ? 0 : done;
}

/**
 * Map types whose LOOKUP_BATCH cannot return a key twice: hash tables resume at a bucket number,
 * arrays at an index. The kernel's generic batch code used by the rest (LPM tries, maps of maps)
 * resumes after the last key returned, and restarts from the first when that key was deleted.
 */
const BATCH_NO_REPEAT_TYPES = new Set<number>([
  MapType.HASH, MapType.PERCPU_HASH, MapType.LRU_HASH, MapType.LRU_PERCPU_HASH, MapType.ARRAY, MapType.PERCPU_ARRAY,
]);

let possibleCpuCount: number | undefined;
/** Number of possible CPUs: the slot count of per-CPU map values. */
export function possibleCpus(): number {
  if (possibleCpuCount === undefined) {
    const text = readFileSync('/sys/devices/system/cpu/possible', 'utf8').trim();
    let count = 0;
    for (const range of text.split(',')) {
      const [lo, hi] = range.split('-').map(Number);
      count += (hi ?? lo) - lo + 1;
    }
    possibleCpuCount = count;
  }
  return possibleCpuCount;
}

/**
 * A BPF map. K and V are the TS types of keys and values; without codecs both are Buffers.
 *
 * @example
 * const counters = BpfMap.create({ type: MapType.ARRAY, keySize: 4, valueSize: 8, maxEntries: 4 }, u32, u64);
 * counters.update(0, 1n);
 */
export class BpfMap<K = Buffer, V = Buffer> {
  readonly fd: number;
  readonly type: MapType;
  readonly keySize: number;
  readonly valueSize: number;
  readonly maxEntries: number;
  readonly flags: number;
  readonly name: string;
  readonly keyCodec: Codec<K>;
  readonly valueCodec: Codec<V>;
  /** Whether close() closes the fd; false for maps owned by a loaded object. */
  readonly #ownsFd: boolean;
  #closed = false;
  readonly #key: Buffer;
  readonly #value: Buffer;
  readonly #nextKey: Buffer;
  readonly #elemAttr = Buffer.alloc(MapElemAttr.size);

  constructor(fd: number, info: MapInfoData, keyCodec?: Codec<K>, valueCodec?: Codec<V>, ownsFd = true) {
    this.fd = fd;
    this.type = info.type;
    this.keySize = info.keySize;
    this.valueSize = info.valueSize;
    this.maxEntries = info.maxEntries;
    this.flags = info.flags;
    this.name = info.name;
    this.keyCodec = keyCodec ?? (bytes(info.keySize) as unknown as Codec<K>);
    this.valueCodec = valueCodec ?? (bytes(info.valueSize) as unknown as Codec<V>);
    if (keyCodec && keyCodec.size !== info.keySize && !KEYLESS_TYPES.has(info.type)) {
      throw new BpfError('ERR_CODEC', `map ${info.name}: key codec is ${keyCodec.size} bytes, map key is ${info.keySize}`);
    }
    if (valueCodec && valueCodec.size !== info.valueSize) {
      throw new BpfError('ERR_CODEC', `map ${info.name}: value codec is ${valueCodec.size} bytes, map value is ${info.valueSize}`);
    }
    this.#ownsFd = ownsFd;
    this.#key = Buffer.alloc(Math.max(info.keySize, 8));
    this.#nextKey = Buffer.alloc(Math.max(info.keySize, 8));
    this.#value = Buffer.alloc(this.valueBufferSize());
    this.#elemAttr.writeUInt32LE(fd, MapElemAttr.mapFd);
    this.#elemAttr.writeBigUInt64LE(info.keySize === 0 ? 0n : addressOf(this.#key), MapElemAttr.key);
    this.#elemAttr.writeBigUInt64LE(addressOf(this.#value), MapElemAttr.value);
  }

  /** Creates a new map in the kernel. */
  static create<K = Buffer, V = Buffer>(spec: MapSpec, keyCodec?: Codec<K>, valueCodec?: Codec<V>): BpfMap<K, V> {
    const attr = Buffer.alloc(MapCreateAttr.size);
    attr.writeUInt32LE(spec.type, MapCreateAttr.mapType);
    attr.writeUInt32LE(spec.keySize, MapCreateAttr.keySize);
    attr.writeUInt32LE(spec.valueSize, MapCreateAttr.valueSize);
    attr.writeUInt32LE(spec.maxEntries, MapCreateAttr.maxEntries);
    attr.writeUInt32LE(spec.flags ?? 0, MapCreateAttr.mapFlags);
    if (spec.innerMap) attr.writeUInt32LE(spec.innerMap.fd, MapCreateAttr.innerMapFd);
    if (spec.name) attr.write(spec.name.slice(0, 15), MapCreateAttr.mapName, 'ascii');
    if (spec.mapExtra !== undefined) attr.writeBigUInt64LE(spec.mapExtra, MapCreateAttr.mapExtra);
    const fd = bpf(BpfCommand.MAP_CREATE, attr, `creating map ${spec.name ?? `of type ${spec.type}`}`);
    return new BpfMap(
      fd,
      {
        type: spec.type,
        id: 0,
        keySize: spec.keySize,
        valueSize: spec.valueSize,
        maxEntries: spec.maxEntries,
        flags: spec.flags ?? 0,
        name: spec.name ?? '',
      },
      keyCodec,
      valueCodec,
    );
  }

  /** Wraps an fd the caller hands over; its shape is read from the kernel. */
  static fromFd<K = Buffer, V = Buffer>(fd: number, keyCodec?: Codec<K>, valueCodec?: Codec<V>, ownsFd = true): BpfMap<K, V> {
    return new BpfMap(fd, mapInfo(fd), keyCodec, valueCodec, ownsFd);
  }

  /** Opens a map by its id, e.g. an inner map a hash of maps' lookup names. */
  static fromId<K = Buffer, V = Buffer>(id: number, keyCodec?: Codec<K>, valueCodec?: Codec<V>): BpfMap<K, V> {
    const attr = Buffer.alloc(GetFdByIdAttr.size);
    attr.writeUInt32LE(id, GetFdByIdAttr.id);
    const fd = bpf(BpfCommand.MAP_GET_FD_BY_ID, attr, `opening map id ${id}`);
    try {
      return BpfMap.fromFd(fd, keyCodec, valueCodec);
    } catch (error) {
      close(fd);
      throw error;
    }
  }

  /** Opens a map pinned in bpffs, e.g. by an earlier run of the agent. */
  static openPinned<K = Buffer, V = Buffer>(path: string, keyCodec?: Codec<K>, valueCodec?: Codec<V>): BpfMap<K, V> {
    const fd = objGet(path, `opening pinned map ${path}`);
    try {
      return BpfMap.fromFd(fd, keyCodec, valueCodec);
    } catch (error) {
      close(fd);
      throw error;
    }
  }

  /** The same map seen through other codecs; shares the fd, which stays owned by this object. */
  withCodecs<K2, V2>(keyCodec: Codec<K2>, valueCodec: Codec<V2>): BpfMap<K2, V2> {
    return new BpfMap(this.fd, this.info(), keyCodec, valueCodec, false);
  }

  get isPerCpu(): boolean {
    return PER_CPU_TYPES.has(this.type);
  }

  /** Bytes of one value as the syscall sees it: per-CPU maps hold one 8-byte-aligned slot per CPU. */
  valueBufferSize(): number {
    return this.isPerCpu ? Math.ceil(this.valueSize / 8) * 8 * possibleCpus() : Math.max(this.valueSize, 1);
  }

  info(): MapInfoData {
    return mapInfo(this.fd);
  }

  /** `size` below the full attr hides trailing fields from commands that want them zero. */
  #elem(cmd: BpfCommand, flags: number, size: number = MapElemAttr.size): number {
    // Two 32-bit writes: a BigInt per call would be an allocation on every lookup.
    this.#elemAttr.writeUInt32LE(flags, MapElemAttr.flags);
    this.#elemAttr.writeUInt32LE(0, MapElemAttr.flags + 4);
    return bpfRaw(cmd, this.#elemAttr, size);
  }

  #fail(action: string, errno: number): never {
    throw errorFromErrno(`${action} map ${this.name || this.fd}`, errno);
  }

  /** The value stored under key, or undefined when there is none. */
  lookup(key: K): V | undefined {
    this.#assertSingleValue('lookup');
    this.keyCodec.encode(key, this.#key, 0);
    const ret = this.#elem(BpfCommand.MAP_LOOKUP_ELEM, 0);
    if (ret === -Errno.ENOENT) return undefined;
    if (ret < 0) this.#fail('looking up in', -ret);
    return this.valueCodec.decode(this.#value, 0);
  }

  /** Every CPU's value under key (per-CPU maps), or undefined. */
  lookupPerCpu(key: K): V[] | undefined {
    this.keyCodec.encode(key, this.#key, 0);
    const ret = this.#elem(BpfCommand.MAP_LOOKUP_ELEM, 0);
    if (ret === -Errno.ENOENT) return undefined;
    if (ret < 0) this.#fail('looking up in', -ret);
    return this.#decodePerCpu(this.#value, 0);
  }

  update(key: K, value: V, flags: UpdateFlag = UpdateFlag.ANY): void {
    this.#assertSingleValue('update');
    this.keyCodec.encode(key, this.#key, 0);
    this.valueCodec.encode(value, this.#value, 0);
    const ret = this.#elem(BpfCommand.MAP_UPDATE_ELEM, flags);
    if (ret < 0) this.#fail('updating', -ret);
  }

  updatePerCpu(key: K, values: V[], flags: UpdateFlag = UpdateFlag.ANY): void {
    this.keyCodec.encode(key, this.#key, 0);
    this.#encodePerCpu(values, this.#value, 0);
    const ret = this.#elem(BpfCommand.MAP_UPDATE_ELEM, flags);
    if (ret < 0) this.#fail('updating', -ret);
  }

  /** Removes key; returns false when it was not there. */
  delete(key: K): boolean {
    this.keyCodec.encode(key, this.#key, 0);
    // DELETE's last attr field is key: the kernel refuses a value pointer after it with EINVAL.
    const ret = this.#elem(BpfCommand.MAP_DELETE_ELEM, 0, MapElemAttr.value);
    if (ret === -Errno.ENOENT) return false;
    if (ret < 0) this.#fail('deleting from', -ret);
    return true;
  }

  /** Queue/stack pop, or hash lookup-and-delete. Returns undefined when empty or absent. */
  lookupAndDelete(key?: K): V | undefined {
    if (key !== undefined) this.keyCodec.encode(key, this.#key, 0);
    const ret = this.#elem(BpfCommand.MAP_LOOKUP_AND_DELETE_ELEM, 0);
    if (ret === -Errno.ENOENT) return undefined;
    if (ret < 0) this.#fail('popping from', -ret);
    return this.valueCodec.decode(this.#value, 0);
  }

  /** Queue/stack push (these maps have no keys). */
  push(value: V, flags: UpdateFlag = UpdateFlag.ANY): void {
    this.valueCodec.encode(value, this.#value, 0);
    const ret = this.#elem(BpfCommand.MAP_UPDATE_ELEM, flags);
    if (ret < 0) this.#fail('pushing to', -ret);
  }

  /**
   * Puts a map into a hash-of-maps or array-of-maps under key. The kernel takes the inner map's
   * fd as the value and keeps its own reference; lookup then returns the inner map's id.
   */
  setInnerMap(key: K, inner: { readonly fd: number }, flags: UpdateFlag = UpdateFlag.ANY): void {
    if (this.type !== MapType.HASH_OF_MAPS && this.type !== MapType.ARRAY_OF_MAPS) {
      throw new BpfError('ERR_INVALID_ARGUMENT', `setting an inner map in map ${this.name || this.fd}: it is not a map of maps (type ${this.type})`);
    }
    this.#updateFd(key, inner.fd, flags, 'setting an inner map in');
  }

  /**
   * setInnerMap off the event loop: the kernel makes every map-of-maps update wait for an RCU
   * grace period (so that no program still uses the old inner map when it returns), milliseconds
   * in which this process can do other work. Resolves once the inner map is in place.
   */
  async setInnerMapAsync(key: K, inner: { readonly fd: number }, flags: UpdateFlag = UpdateFlag.ANY): Promise<void> {
    if (this.type !== MapType.HASH_OF_MAPS && this.type !== MapType.ARRAY_OF_MAPS) {
      throw new BpfError('ERR_INVALID_ARGUMENT', `setting an inner map in map ${this.name || this.fd}: it is not a map of maps (type ${this.type})`);
    }
    // Buffers of its own: the shared scratch buffers change under a call in flight.
    const keyBuffer = Buffer.alloc(Math.max(this.keySize, 1));
    const valueBuffer = Buffer.alloc(4);
    this.keyCodec.encode(key, keyBuffer, 0);
    valueBuffer.writeUInt32LE(inner.fd, 0);
    const attr = Buffer.alloc(MapElemAttr.size);
    attr.writeUInt32LE(this.fd, MapElemAttr.mapFd);
    attr.writeBigUInt64LE(addressOf(keyBuffer), MapElemAttr.key);
    attr.writeBigUInt64LE(addressOf(valueBuffer), MapElemAttr.value);
    attr.writeUInt32LE(flags, MapElemAttr.flags);
    try {
      await bpfAsync(BpfCommand.MAP_UPDATE_ELEM, attr, `setting an inner map in map ${this.name || this.fd}`);
    } finally {
      // Referenced until here so that neither buffer can be collected while the kernel reads it.
      keyBuffer.length + valueBuffer.length;
    }
  }

  /** Puts a program into a prog array (for tail calls) under key; lookup returns the program's id. */
  setProgram(key: K, program: { readonly fd: number }, flags: UpdateFlag = UpdateFlag.ANY): void {
    if (this.type !== MapType.PROG_ARRAY) {
      throw new BpfError('ERR_INVALID_ARGUMENT', `setting a program in map ${this.name || this.fd}: it is not a prog array (type ${this.type})`);
    }
    this.#updateFd(key, program.fd, flags, 'setting a program in');
  }

  /** Update with an fd as the u32 value, whatever the value codec (which reads back ids). */
  #updateFd(key: K, fd: number, flags: UpdateFlag, action: string): void {
    this.keyCodec.encode(key, this.#key, 0);
    this.#value.writeUInt32LE(fd, 0);
    const ret = this.#elem(BpfCommand.MAP_UPDATE_ELEM, flags);
    if (ret < 0) this.#fail(action, -ret);
  }

  /**
   * Writes many entries in one syscall (BPF_MAP_UPDATE_BATCH). Maps without batch support fall
   * back to one update per entry. Returns how many were written.
   */
  updateBatch(entries: ReadonlyArray<readonly [K, V]>, flags: UpdateFlag = UpdateFlag.ANY): number {
    if (entries.length === 0) return 0;
    const slot = this.isPerCpu ? this.valueBufferSize() : this.valueSize;
    const keys = Buffer.alloc(entries.length * this.keySize);
    const values = Buffer.alloc(entries.length * slot);
    for (let i = 0; i < entries.length; i++) {
      this.keyCodec.encode(entries[i][0], keys, i * this.keySize);
      if (this.isPerCpu) this.#encodePerCpu(entries[i][1] as unknown as V[], values, i * slot);
      else this.valueCodec.encode(entries[i][1], values, i * slot);
    }
    return this.updateBatchRaw(keys, values, entries.length, flags);
  }

  /** updateBatch over keys and values already encoded back to back. */
  updateBatchRaw(keys: Buffer, values: Buffer, count: number, flags: UpdateFlag = UpdateFlag.ANY): number {
    const slot = this.isPerCpu ? this.valueBufferSize() : this.valueSize;
    // The kernel copies count*size bytes from these addresses: short buffers would leak memory into the map.
    if (keys.length < count * this.keySize || values.length < count * slot) {
      throw new BpfError(
        'ERR_INVALID_ARGUMENT',
        `batch-updating map ${this.name || this.fd}: ${count} entries need ${count * this.keySize} key and ${count * slot} value bytes, got ${keys.length} and ${values.length}`,
      );
    }
    // The kernel's batch update takes no NOEXIST/EXIST (elem_flags may only be BPF_F_LOCK).
    if (flags !== UpdateFlag.ANY) return this.#updateOneByOne(keys, values, count, slot, flags);
    const attr = this.#batchAttr(keys, values, count, flags);
    const ret = bpfRaw(BpfCommand.MAP_UPDATE_BATCH, attr, MapBatchAttr.size);
    if (ret < 0 && batchMissing(this.type, ret, attr, count)) return this.#updateOneByOne(keys, values, count, slot, flags);
    if (ret < 0) this.#fail(`batch-updating (${batchDone(attr, count)} of ${count} written)`, -ret);
    return attr.readUInt32LE(MapBatchAttr.count);
  }

  #updateOneByOne(keys: Buffer, values: Buffer, count: number, slot: number, flags: number): number {
    for (let i = 0; i < count; i++) {
      keys.copy(this.#key, 0, i * this.keySize, (i + 1) * this.keySize);
      values.copy(this.#value, 0, i * slot, (i + 1) * slot);
      const ret = this.#elem(BpfCommand.MAP_UPDATE_ELEM, flags);
      if (ret < 0) this.#fail(`updating (${i} of ${count} written)`, -ret);
    }
    return count;
  }

  /** Deletes many keys in one syscall; keys that are absent make it stop with ERR_NOT_FOUND. */
  deleteBatch(keys: readonly K[]): number {
    if (keys.length === 0) return 0;
    const keyBuf = Buffer.alloc(keys.length * this.keySize);
    keys.forEach((key, i) => this.keyCodec.encode(key, keyBuf, i * this.keySize));
    const attr = this.#batchAttr(keyBuf, null, keys.length, 0);
    const ret = bpfRaw(BpfCommand.MAP_DELETE_BATCH, attr, MapBatchAttr.size);
    if (ret < 0 && batchMissing(this.type, ret, attr, keys.length)) {
      // One by one, stopping at an absent key as the kernel's batch delete does.
      for (let i = 0; i < keys.length; i++) {
        if (!this.delete(keys[i])) this.#fail(`batch-deleting (${i} of ${keys.length} deleted)`, Errno.ENOENT);
      }
      return keys.length;
    }
    if (ret < 0) this.#fail(`batch-deleting (${batchDone(attr, keys.length)} of ${keys.length} deleted)`, -ret);
    return attr.readUInt32LE(MapBatchAttr.count);
  }

  #batchAttr(keys: Buffer, values: Buffer | null, count: number, elemFlags: number): Buffer {
    const attr = Buffer.alloc(MapBatchAttr.size);
    attr.writeBigUInt64LE(addressOf(keys), MapBatchAttr.keys);
    if (values) attr.writeBigUInt64LE(addressOf(values), MapBatchAttr.values);
    attr.writeUInt32LE(count, MapBatchAttr.count);
    attr.writeUInt32LE(this.fd, MapBatchAttr.mapFd);
    attr.writeBigUInt64LE(BigInt(elemFlags), MapBatchAttr.elemFlags);
    return attr;
  }

  /**
   * Every entry, each key exactly once. Uses BPF_MAP_LOOKUP_BATCH where the map supports it
   * (one syscall per chunk); otherwise walks GET_NEXT_KEY and drops keys it has already returned,
   * because a hash map being written to can hand the same key back twice.
   */
  *entries(chunk = 256): Generator<[K, V]> {
    this.#assertSingleValue('entries');
    for (const [key, value] of this.#rawEntries(chunk)) yield [this.keyCodec.decode(key, 0), this.valueCodec.decode(value, 0)];
  }

  *entriesPerCpu(chunk = 256): Generator<[K, V[]]> {
    for (const [key, value] of this.#rawEntries(chunk)) yield [this.keyCodec.decode(key, 0), this.#decodePerCpu(value, 0)];
  }

  *keys(): Generator<K> {
    for (const key of this.#rawKeys()) yield this.keyCodec.decode(key, 0);
  }

  *#rawEntries(chunk: number): Generator<[Buffer, Buffer]> {
    const batched = this.#lookupBatch(chunk);
    if (batched && BATCH_NO_REPEAT_TYPES.has(this.type)) {
      yield* batched;
      return;
    }
    if (batched) {
      const seen = new Set<string>();
      for (const entry of batched) {
        const id = entry[0].toString('latin1');
        if (seen.has(id)) continue;
        seen.add(id);
        yield entry;
      }
      return;
    }
    for (const key of this.#rawKeys()) {
      key.copy(this.#key, 0, 0, this.keySize);
      const ret = this.#elem(BpfCommand.MAP_LOOKUP_ELEM, 0);
      if (ret === -Errno.ENOENT) continue; // deleted while we walked
      if (ret < 0) this.#fail('looking up in', -ret);
      yield [key, Buffer.from(this.#value)];
    }
  }

  #lookupBatch(chunk: number): Generator<[Buffer, Buffer]> | undefined {
    const slot = this.valueBufferSize();
    let keys = Buffer.alloc(chunk * this.keySize);
    let values = Buffer.alloc(chunk * slot);
    // A hash bucket larger than the chunk: the kernel says ENOSPC and wants bigger buffers.
    const grow = (errno: number): void => {
      if (chunk >= Math.max(this.maxEntries, 1) * 2) this.#fail('batch-reading', errno);
      chunk *= 2;
      keys = Buffer.alloc(chunk * this.keySize);
      values = Buffer.alloc(chunk * slot);
    };
    // Batch tokens are opaque: bucket numbers for hash maps, indexes for arrays; 8 bytes hold both.
    const inBatch = Buffer.alloc(Math.max(this.keySize, 8));
    const outBatch = Buffer.alloc(Math.max(this.keySize, 8));
    const attr = Buffer.alloc(MapBatchAttr.size);
    const run = (first: boolean): number => {
      attr.fill(0);
      if (!first) {
        outBatch.copy(inBatch);
        attr.writeBigUInt64LE(addressOf(inBatch), MapBatchAttr.inBatch);
      }
      attr.writeBigUInt64LE(addressOf(outBatch), MapBatchAttr.outBatch);
      attr.writeBigUInt64LE(addressOf(keys), MapBatchAttr.keys);
      attr.writeBigUInt64LE(addressOf(values), MapBatchAttr.values);
      attr.writeUInt32LE(chunk, MapBatchAttr.count);
      attr.writeUInt32LE(this.fd, MapBatchAttr.mapFd);
      return bpfRaw(BpfCommand.MAP_LOOKUP_BATCH, attr, MapBatchAttr.size);
    };
    let first = run(true);
    while (first === -Errno.ENOSPC) {
      grow(-first);
      first = run(true);
    }
    if (first < 0 && first !== -Errno.ENOENT) {
      if (first === -Errno.EINVAL || first === -Errno.ENOTSUP || first === -Errno.ENOTSUPP_KERNEL) return undefined;
      this.#fail('batch-reading', -first);
    }
    const keySize = this.keySize;
    const fail = (errno: number) => this.#fail('batch-reading', errno);
    return (function* () {
      let ret = first;
      for (;;) {
        const count = attr.readUInt32LE(MapBatchAttr.count);
        for (let i = 0; i < count; i++) {
          yield [
            Buffer.from(keys.subarray(i * keySize, (i + 1) * keySize)),
            Buffer.from(values.subarray(i * slot, (i + 1) * slot)),
          ] as [Buffer, Buffer];
        }
        if (ret === -Errno.ENOENT) return;
        ret = run(false);
        while (ret === -Errno.ENOSPC) {
          grow(-ret);
          ret = run(false);
        }
        if (ret < 0 && ret !== -Errno.ENOENT) fail(-ret);
      }
    })();
  }

  *#rawKeys(): Generator<Buffer> {
    const attr = Buffer.alloc(MapElemAttr.size);
    attr.writeUInt32LE(this.fd, MapElemAttr.mapFd);
    attr.writeBigUInt64LE(addressOf(this.#nextKey), MapElemAttr.value);
    const seen = new Set<string>();
    let current: Buffer | undefined;
    const cursor = Buffer.alloc(Math.max(this.keySize, 8));
    for (;;) {
      attr.writeBigUInt64LE(current ? addressOf(cursor) : 0n, MapElemAttr.key);
      const ret = bpfRaw(BpfCommand.MAP_GET_NEXT_KEY, attr, MapElemAttr.size);
      if (ret === -Errno.ENOENT) return;
      if (ret < 0) this.#fail('iterating', -ret);
      const key = Buffer.from(this.#nextKey.subarray(0, this.keySize));
      key.copy(cursor);
      current = key;
      const id = key.toString('latin1');
      if (seen.has(id)) continue;
      seen.add(id);
      yield key;
    }
  }

  #assertSingleValue(operation: string): void {
    if (this.isPerCpu) {
      throw new BpfError('ERR_INVALID_ARGUMENT', `${operation} on per-CPU map ${this.name}: use the PerCpu variant, which takes one value per CPU`);
    }
  }

  #decodePerCpu(buffer: Buffer, offset: number): V[] {
    const stride = Math.ceil(this.valueSize / 8) * 8;
    const out = new Array<V>(possibleCpus());
    for (let cpu = 0; cpu < out.length; cpu++) out[cpu] = this.valueCodec.decode(buffer, offset + cpu * stride);
    return out;
  }

  #encodePerCpu(values: V[], buffer: Buffer, offset: number): void {
    const cpus = possibleCpus();
    if (values.length !== cpus) {
      throw new BpfError('ERR_INVALID_ARGUMENT', `updating per-CPU map ${this.name}: want ${cpus} values (one per possible CPU), got ${values.length}`);
    }
    const stride = Math.ceil(this.valueSize / 8) * 8;
    for (let cpu = 0; cpu < cpus; cpu++) this.valueCodec.encode(values[cpu], buffer, offset + cpu * stride);
  }

  /** Pins the map in bpffs so it outlives this process. */
  pin(path: string): void {
    objPin(this.fd, path, `pinning map ${this.name} at ${path}`);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#ownsFd) close(this.fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

export function mapInfo(fd: number): MapInfoData {
  const info = objInfo(fd, MapInfo.size, `reading info of map fd ${fd}`);
  const nameEnd = info.indexOf(0, MapInfo.name);
  return {
    type: info.readUInt32LE(MapInfo.type) as MapType,
    id: info.readUInt32LE(MapInfo.id),
    keySize: info.readUInt32LE(MapInfo.keySize),
    valueSize: info.readUInt32LE(MapInfo.valueSize),
    maxEntries: info.readUInt32LE(MapInfo.maxEntries),
    flags: info.readUInt32LE(MapInfo.mapFlags),
    name: info.toString('ascii', MapInfo.name, nameEnd < 0 || nameEnd > MapInfo.name + 16 ? MapInfo.name + 16 : nameEnd),
  };
}

/** BPF_OBJ_GET_INFO_BY_FD into a fresh buffer of `size` bytes. */
export function objInfo(fd: number, size: number, context: string): Buffer {
  const info = Buffer.alloc(size);
  const attr = Buffer.alloc(InfoAttr.size);
  attr.writeUInt32LE(fd, InfoAttr.bpfFd);
  attr.writeUInt32LE(size, InfoAttr.infoLen);
  attr.writeBigUInt64LE(addressOf(info), InfoAttr.info);
  bpf(BpfCommand.OBJ_GET_INFO_BY_FD, attr, context);
  return info;
}

export function objPin(fd: number, path: string, context: string): void {
  const name = cString(path);
  const attr = Buffer.alloc(ObjAttr.size);
  attr.writeBigUInt64LE(addressOf(name), ObjAttr.pathname);
  attr.writeUInt32LE(fd, ObjAttr.bpfFd);
  bpf(BpfCommand.OBJ_PIN, attr, context);
}

export function objGet(path: string, context: string): number {
  const name = cString(path);
  const attr = Buffer.alloc(ObjAttr.size);
  attr.writeBigUInt64LE(addressOf(name), ObjAttr.pathname);
  return bpf(BpfCommand.OBJ_GET, attr, context);
}

