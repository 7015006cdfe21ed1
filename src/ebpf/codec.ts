/**
 * Codecs between TypeScript values and the bytes of C structs shared with BPF programs.
 * A struct codec lays its fields out by C's rules (natural alignment, tail padding), so that one
 * definition beside the C header is enough; `checkLayout` compares it with the struct's BTF.
 * @module
 */
import { BpfError } from './errors.ts';

export interface Codec<T> {
  /** Bytes the value occupies, as C's sizeof. */
  readonly size: number;
  /** C's alignof. */
  readonly align: number;
  encode(value: T, buffer: Buffer, offset: number): void;
  decode(buffer: Buffer, offset: number): T;
}

export type Infer<C> = C extends Codec<infer T> ? T : never;

function scalar<T>(size: number, encode: Codec<T>['encode'], decode: Codec<T>['decode']): Codec<T> {
  return { size, align: size, encode, decode };
}

/**
 * Range checks before writing: Buffer's writers would otherwise throw a RangeError without a
 * BpfError code, or (for fractions, and for `>>> 0`) silently store some other number.
 */
function checkInt(type: string, value: number, min: number, max: number): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new BpfError('ERR_CODEC', `encoding ${type}: ${value} is not an integer in ${min}..${max}`);
  }
}
function checkBigInt(type: string, value: bigint, min: bigint, max: bigint): void {
  if (typeof value !== 'bigint' || value < min || value > max) {
    throw new BpfError('ERR_CODEC', `encoding ${type}: ${String(value)} is not a bigint in ${min}..${max}`);
  }
}
const U64_MAX = (1n << 64n) - 1n;
const I64_MIN = -(1n << 63n);
const I64_MAX = (1n << 63n) - 1n;

/**
 * A DataView over a Buffer, made once per Buffer and kept on it: Buffer's BigInt writers split the
 * value with BigInt arithmetic (about 40 ns a call), DataView's take a fraction of that, and the
 * 64-bit codecs sit on hot paths (map values, counters).
 */
const VIEW = Symbol('ciliate.codec.view');
function viewOf(buffer: Buffer): DataView {
  const holder = buffer as Buffer & { [VIEW]?: DataView };
  return (holder[VIEW] ??= new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength));
}
/** DataView's accessors check offsets against the view, not the Buffer's own bounds message. */
function checkRoom(buffer: Buffer, offset: number): void {
  if (!(offset >= 0 && offset + 8 <= buffer.length)) throw new BpfError('ERR_CODEC', `encoding a 64-bit value at offset ${offset}: the buffer has ${buffer.length} bytes`);
}

export const u8: Codec<number> = scalar(1, (v, b, o) => (checkInt('u8', v, 0, 0xff), void b.writeUInt8(v, o)), (b, o) => b.readUInt8(o));
export const i8: Codec<number> = scalar(1, (v, b, o) => (checkInt('i8', v, -0x80, 0x7f), void b.writeInt8(v, o)), (b, o) => b.readInt8(o));
export const u16: Codec<number> = scalar(2, (v, b, o) => (checkInt('u16', v, 0, 0xffff), void b.writeUInt16LE(v, o)), (b, o) => b.readUInt16LE(o));
export const i16: Codec<number> = scalar(2, (v, b, o) => (checkInt('i16', v, -0x8000, 0x7fff), void b.writeInt16LE(v, o)), (b, o) => b.readInt16LE(o));
/** Also takes negative int32s (JS bitwise results with bit 31 set) and stores them as C's conversion does. */
export const u32: Codec<number> = scalar(
  4,
  (v, b, o) => (checkInt('u32', v, -0x80000000, 0xffffffff), void b.writeUInt32LE(v >>> 0, o)),
  (b, o) => b.readUInt32LE(o),
);
export const i32: Codec<number> = scalar(4, (v, b, o) => (checkInt('i32', v, -0x80000000, 0x7fffffff), void b.writeInt32LE(v, o)), (b, o) => b.readInt32LE(o));
export const u64: Codec<bigint> = scalar(
  8,
  (v, b, o) => (checkBigInt('u64', v, 0n, U64_MAX), checkRoom(b, o), viewOf(b).setBigUint64(o, v, true)),
  (b, o) => b.readBigUInt64LE(o),
);
export const i64: Codec<bigint> = scalar(
  8,
  (v, b, o) => (checkBigInt('i64', v, I64_MIN, I64_MAX), checkRoom(b, o), viewOf(b).setBigInt64(o, v, true)),
  (b, o) => b.readBigInt64LE(o),
);
/** A u64 read as a JS number: for counters that stay below 2^53. */
export const u64n: Codec<number> = scalar(
  8,
  (v, b, o) => (checkInt('u64n', v, 0, Number.MAX_SAFE_INTEGER), checkRoom(b, o), viewOf(b).setBigUint64(o, BigInt(v), true)),
  (b, o) => Number(b.readBigUInt64LE(o)),
);
/** __be16: network byte order, as ports are kept in packet headers. */
export const be16: Codec<number> = scalar(2, (v, b, o) => (checkInt('be16', v, 0, 0xffff), void b.writeUInt16BE(v, o)), (b, o) => b.readUInt16BE(o));
/** __be32 as a number in host order. */
export const be32: Codec<number> = scalar(
  4,
  (v, b, o) => (checkInt('be32', v, -0x80000000, 0xffffffff), void b.writeUInt32BE(v >>> 0, o)),
  (b, o) => b.readUInt32BE(o),
);

/** An IPv4 address held as __be32, as a dotted string on the TS side. */
export const ipv4: Codec<string> = {
  size: 4,
  align: 4,
  encode(value, buffer, offset) {
    const parts = value.split('.');
    if (parts.length !== 4) throw new BpfError('ERR_CODEC', `encoding IPv4 address "${value}": not a dotted quad`);
    for (let i = 0; i < 4; i++) {
      // Decimal digits only: Number() would also take '0x1', ' 1' and '1e2'.
      const octet = Number(parts[i]);
      if (!/^\d{1,3}$/.test(parts[i]) || octet > 255) {
        throw new BpfError('ERR_CODEC', `encoding IPv4 address "${value}": octet ${i + 1} is not 0-255`);
      }
      buffer[offset + i] = octet;
    }
  },
  decode(buffer, offset) {
    return `${buffer[offset]}.${buffer[offset + 1]}.${buffer[offset + 2]}.${buffer[offset + 3]}`;
  },
};

/** A 6-byte MAC address as "aa:bb:cc:dd:ee:ff". */
export const mac: Codec<string> = {
  size: 6,
  align: 1,
  encode(value, buffer, offset) {
    const parts = value.split(':');
    if (parts.length !== 6) throw new BpfError('ERR_CODEC', `encoding MAC address "${value}": want six hex octets`);
    for (let i = 0; i < 6; i++) {
      // parseInt would turn 'zz' into NaN (stored as 0) and '1ff' into 511 (stored as 0xff).
      if (!/^[0-9a-fA-F]{1,2}$/.test(parts[i])) {
        throw new BpfError('ERR_CODEC', `encoding MAC address "${value}": octet ${i + 1} is not one or two hex digits`);
      }
      buffer[offset + i] = Number.parseInt(parts[i], 16);
    }
  },
  decode(buffer, offset) {
    return Array.from(buffer.subarray(offset, offset + 6), (b) => b.toString(16).padStart(2, '0')).join(':');
  },
};

/** Opaque bytes; decode copies them out so the value outlives the buffer it came from. */
export function bytes(size: number, align = 1): Codec<Buffer> {
  return {
    size,
    align,
    encode(value, buffer, offset) {
      if (value.length !== size) {
        throw new BpfError('ERR_CODEC', `encoding ${size} bytes: got ${value.length}`);
      }
      value.copy(buffer, offset);
    },
    decode(buffer, offset) {
      return Buffer.from(buffer.subarray(offset, offset + size));
    },
  };
}

/** char[size], NUL-padded. */
export function cstring(size: number): Codec<string> {
  return {
    size,
    align: 1,
    encode(value, buffer, offset) {
      buffer.fill(0, offset, offset + size);
      const written = buffer.write(value, offset, size - 1, 'utf8');
      if (written < Buffer.byteLength(value)) {
        throw new BpfError('ERR_CODEC', `encoding string "${value}": longer than ${size - 1} bytes`);
      }
    },
    decode(buffer, offset) {
      const end = buffer.indexOf(0, offset);
      return buffer.toString('utf8', offset, end < 0 || end > offset + size ? offset + size : end);
    },
  };
}

export function array<T>(element: Codec<T>, length: number): Codec<T[]> {
  return {
    size: element.size * length,
    align: element.align,
    encode(value, buffer, offset) {
      if (value.length !== length) throw new BpfError('ERR_CODEC', `encoding array: want ${length} elements, got ${value.length}`);
      for (let i = 0; i < length; i++) element.encode(value[i], buffer, offset + i * element.size);
    },
    decode(buffer, offset) {
      const out = new Array<T>(length);
      for (let i = 0; i < length; i++) out[i] = element.decode(buffer, offset + i * element.size);
      return out;
    },
  };
}

/** Explicit padding: always written as zeros, never part of the TS value. */
export interface PadCodec extends Codec<undefined> {
  readonly padding: true;
}
export function pad(size: number): PadCodec {
  return {
    size,
    align: 1,
    padding: true,
    encode(_value, buffer, offset) {
      buffer.fill(0, offset, offset + size);
    },
    decode() {
      return undefined;
    },
  };
}

type FieldCodecs = Record<string, Codec<any>>;
type ValueFields<F extends FieldCodecs> = {
  [K in keyof F as F[K] extends PadCodec ? never : K]: Infer<F[K]>;
};
export type StructValue<F extends FieldCodecs> = { [K in keyof ValueFields<F>]: ValueFields<F>[K] };

export interface StructCodec<F extends FieldCodecs> extends Codec<StructValue<F>> {
  /** The C struct's name, as BTF knows it. */
  readonly name: string;
  readonly fields: F;
  /** Byte offset of each field, as C's offsetof. */
  readonly offsets: { readonly [K in keyof F]: number };
}

/**
 * A C struct. Fields are laid out in order with natural alignment and the size is rounded up to
 * the struct's alignment, exactly as clang does for BPF; holes are zeroed on encode.
 *
 * @example
 * const ctKey = struct('ct_key', { saddr: ipv4, daddr: ipv4, sport: be16, dport: be16, proto: u8, _pad: pad(3) });
 */
export function struct<F extends FieldCodecs>(name: string, fields: F): StructCodec<F> {
  const names = Object.keys(fields);
  const offsets: Record<string, number> = {};
  let offset = 0;
  let align = 1;
  for (const field of names) {
    const codec = fields[field];
    offset = alignUp(offset, codec.align);
    offsets[field] = offset;
    offset += codec.size;
    align = Math.max(align, codec.align);
  }
  const size = alignUp(offset, align);
  const valueFields = names.filter((n) => !(fields[n] as Partial<PadCodec>).padding);
  const padFields = names.filter((n) => (fields[n] as Partial<PadCodec>).padding);
  const hasHoles = size !== names.reduce((sum, n) => sum + fields[n].size, 0);
  return {
    name,
    fields,
    offsets: offsets as { [K in keyof F]: number },
    size,
    align,
    encode(value, buffer, offset0) {
      if (hasHoles) buffer.fill(0, offset0, offset0 + size);
      const record = value as Record<string, unknown>;
      for (const field of valueFields) {
        const v = record[field];
        if (v === undefined) throw new BpfError('ERR_CODEC', `encoding struct ${name}: field ${field} is missing`);
        fields[field].encode(v, buffer, offset0 + offsets[field]);
      }
      for (const field of padFields) fields[field].encode(undefined, buffer, offset0 + offsets[field]);
    },
    decode(buffer, offset0) {
      const out: Record<string, unknown> = {};
      for (const field of valueFields) out[field] = fields[field].decode(buffer, offset0 + offsets[field]);
      return out as StructValue<F>;
    },
  };
}

export function alignUp(value: number, align: number): number {
  return Math.ceil(value / align) * align;
}

/** Encodes into a fresh Buffer of exactly codec.size bytes. */
export function encode<T>(codec: Codec<T>, value: T): Buffer {
  const buffer = Buffer.alloc(codec.size);
  codec.encode(value, buffer, 0);
  return buffer;
}

export function decode<T>(codec: Codec<T>, buffer: Buffer, offset = 0): T {
  if (buffer.length - offset < codec.size) {
    throw new BpfError('ERR_CODEC', `decoding ${codec.size} bytes: only ${buffer.length - offset} available`);
  }
  return codec.decode(buffer, offset);
}
