/**
 * A small reader of BTF, the kernel's type format: raw (as /sys/kernel/btf/vmlinux) or the `.BTF`
 * section of a clang-built BPF object. It exists so codecs can be checked against the C structs
 * they mirror, and so config globals and enums can be found by name rather than by hand-kept
 * offsets. It reads types; it does not write, dedup or validate BTF the way the kernel does.
 * @module
 */
import { readFileSync } from 'node:fs';
import type { Codec, PadCodec, StructCodec } from './codec.ts';
import { BpfError } from './errors.ts';

// ---------------------------------------------------------------------------------------------
// ELF

export interface ElfSection {
  /** Index in the section header table, as symbols' st_shndx refer to it. */
  readonly index: number;
  readonly name: string;
  /** sh_type: 1 PROGBITS, 2 SYMTAB, 3 STRTAB, 8 NOBITS, ... */
  readonly type: number;
  /** File offset of the contents; meaningless for NOBITS sections such as .bss. */
  readonly offset: number;
  readonly size: number;
  /** sh_link: for a symbol table, the index of its string table. */
  readonly link: number;
}

const SHT_SYMTAB = 2;
const SHT_NOBITS = 8;
const SHN_UNDEF = 0;
const SHN_XINDEX = 0xffff;
const ELF_HEADER_SIZE = 64;
const SECTION_HEADER_SIZE = 64;
const SYMBOL_SIZE = 24;

/** The section headers of an ELF64 little-endian file (BPF objects are always ELF64). */
export function readElfSections(path: string): ElfSection[] {
  return parseElfSections(readWhole(path), path);
}

function parseElfSections(file: Buffer, path: string): ElfSection[] {
  const fail = (why: string): never => {
    throw new BpfError('ERR_ELF', `reading ELF file ${path}: ${why}`);
  };
  if (file.length < ELF_HEADER_SIZE || file.readUInt32BE(0) !== 0x7f454c46) fail('not an ELF file');
  if (file[4] !== 2) fail('not ELF64 (BPF objects are 64-bit)');
  if (file[5] !== 1) fail('not little-endian (big-endian BPF objects are not supported)');

  const shoff = toOffset(file.readBigUInt64LE(0x28));
  const shentsize = file.readUInt16LE(0x3a);
  let shnum = file.readUInt16LE(0x3c);
  let shstrndx = file.readUInt16LE(0x3e);
  if (shoff === 0) return [];
  if (shentsize < SECTION_HEADER_SIZE) fail(`section header entries are ${shentsize} bytes, want ${SECTION_HEADER_SIZE}`);
  const header = (i: number): number => {
    const at = shoff + i * shentsize;
    if (at + SECTION_HEADER_SIZE > file.length) fail(`section header ${i} lies past the end of the file`);
    return at;
  };
  // Files with 0xff00 sections or more keep the real counts in section 0, as the ELF spec says.
  if (shnum === 0) shnum = toOffset(file.readBigUInt64LE(header(0) + 32));
  if (shstrndx === SHN_XINDEX) shstrndx = file.readUInt32LE(header(0) + 40);
  if (shstrndx >= shnum) fail(`section name table index ${shstrndx} is out of range`);

  const raw = Array.from({ length: shnum }, (_, index) => {
    const at = header(index);
    return {
      index,
      nameOff: file.readUInt32LE(at),
      type: file.readUInt32LE(at + 4),
      offset: toOffset(file.readBigUInt64LE(at + 24)),
      size: toOffset(file.readBigUInt64LE(at + 32)),
      link: file.readUInt32LE(at + 40),
    };
  });
  for (const s of raw) {
    if (s.type !== SHT_NOBITS && s.offset + s.size > file.length) fail(`section ${s.index} lies past the end of the file`);
  }
  const names = raw[shstrndx];
  return raw.map(({ nameOff, ...s }) => ({ ...s, name: cString(file, names.offset + nameOff, names.offset + names.size) }));
}

interface ElfSymbol {
  readonly name: string;
  readonly section: number;
  readonly value: number;
}

function parseElfSymbols(file: Buffer, sections: readonly ElfSection[]): ElfSymbol[] {
  const symtab = sections.find((s) => s.type === SHT_SYMTAB);
  const strtab = symtab && sections[symtab.link];
  if (!symtab || !strtab) return [];
  const out: ElfSymbol[] = [];
  for (let at = symtab.offset; at + SYMBOL_SIZE <= symtab.offset + symtab.size; at += SYMBOL_SIZE) {
    const section = file.readUInt16LE(at + 6);
    if (section === SHN_UNDEF || section >= 0xff00) continue;
    out.push({
      name: cString(file, strtab.offset + file.readUInt32LE(at), strtab.offset + strtab.size),
      section,
      value: toOffset(file.readBigUInt64LE(at + 8)),
    });
  }
  return out;
}

function toOffset(value: bigint): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new BpfError('ERR_ELF', `offset ${value} is too large`);
  return Number(value);
}

function cString(buffer: Buffer, start: number, limit: number): string {
  if (start >= limit) return '';
  const end = buffer.indexOf(0, start);
  return buffer.toString('utf8', start, end < 0 || end > limit ? limit : end);
}

function readWhole(path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (cause) {
    const code = (cause as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new BpfError('ERR_NOT_FOUND', `reading ${path}: no such file`, { cause });
    if (code === 'EACCES' || code === 'EPERM') {
      throw new BpfError('ERR_PERMISSION', `reading ${path}: permission denied`, { cause });
    }
    throw new BpfError('ERR_ELF', `reading ${path}: ${(cause as Error).message}`, { cause });
  }
}

// ---------------------------------------------------------------------------------------------
// BTF

/** BTF kinds by their number in `btf_type.info`; index 0 is void. */
const KINDS = [
  'void',
  'int',
  'ptr',
  'array',
  'struct',
  'union',
  'enum',
  'fwd',
  'typedef',
  'volatile',
  'const',
  'restrict',
  'func',
  'func_proto',
  'var',
  'datasec',
  'float',
  'decl_tag',
  'type_tag',
  'enum64',
] as const;

export type BtfKind = Exclude<(typeof KINDS)[number], 'void'>;

const KIND = Object.fromEntries(KINDS.map((k, i) => [k, i])) as { readonly [K in (typeof KINDS)[number]]: number };

const BTF_MAGIC = 0xeb9f;
const TYPE_HEADER_SIZE = 12;
/** Hops allowed through typedef/const/... chains before the BTF is deemed cyclic. */
const MAX_RESOLVE_DEPTH = 32;

export interface BtfMember {
  /** '' for an unnamed bitfield. Members of anonymous structs and unions are listed by their own names. */
  readonly name: string;
  /** Byte offset from the start of the outermost struct, rounded down for bitfields. */
  readonly offset: number;
  /** Bit offset from the start of the outermost struct. */
  readonly bitOffset: number;
  /** Width of a bitfield; 0 for an ordinary member. */
  readonly bitSize: number;
  /** sizeof the member's type, after typedefs and qualifiers (for a bitfield: its declared type). */
  readonly size: number;
  /** Reached through an anonymous struct or union, as C lets `iph->saddr` reach into one. */
  readonly nested: boolean;
}

export interface BtfStructLayout {
  readonly name: string;
  readonly size: number;
  readonly members: readonly BtfMember[];
}

export interface BtfDatasec {
  readonly name: string;
  readonly size: number;
  readonly vars: readonly { readonly name: string; readonly offset: number; readonly size: number }[];
}

/** Parsed BTF. Types are indexed once; names are decoded only when looked up. */
export class Btf {
  /** Where the BTF came from, for error messages. */
  readonly source: string;
  #types: Buffer;
  #strings: Buffer;
  /** Byte offset of each type's btf_type in #types; id 0 (void) has none. */
  #offsets: Uint32Array;
  #byName: Map<string, number[]> | undefined;

  private constructor(data: Buffer, source: string) {
    this.source = source;
    const fail = (why: string): never => {
      throw new BpfError('ERR_ELF', `parsing BTF of ${source}: ${why}`);
    };
    if (data.length < 24) fail('too short for a BTF header');
    const magic = data.readUInt16LE(0);
    if (magic === 0x9feb) fail('big-endian BTF is not supported');
    if (magic !== BTF_MAGIC) fail(`bad magic 0x${magic.toString(16)}, want 0xeb9f`);
    const hdrLen = data.readUInt32LE(4);
    const [typeOff, typeLen, strOff, strLen] = [8, 12, 16, 20].map((at) => data.readUInt32LE(at));
    if (hdrLen < 24 || hdrLen > data.length) fail(`bad header length ${hdrLen}`);
    const body = data.subarray(hdrLen);
    if (typeOff + typeLen > body.length) fail('type section lies past the end');
    if (strOff + strLen > body.length) fail('string section lies past the end');
    this.#types = body.subarray(typeOff, typeOff + typeLen);
    this.#strings = body.subarray(strOff, strOff + strLen);
    this.#offsets = this.#index(fail);
  }

  /** Raw BTF, as the kernel exposes it in /sys/kernel/btf/. */
  static fromFile(path: string): Btf {
    return new Btf(readWhole(path), path);
  }

  static fromBuffer(data: Buffer, source = 'buffer'): Btf {
    return new Btf(data, source);
  }

  /**
   * The `.BTF` section of a BPF object. Clang leaves DATASEC sizes and variable offsets at zero
   * (the linker decides them), so they are filled in from the ELF section and symbol tables, as
   * libbpf does before loading.
   */
  static fromElf(path: string): Btf {
    const file = readWhole(path);
    const sections = parseElfSections(file, path);
    const section = sections.find((s) => s.name === '.BTF');
    if (!section) throw new BpfError('ERR_ELF', `reading ELF file ${path}: no .BTF section (compile with clang -g)`);
    // A copy, because the fix-up writes into it and the file buffer may be pooled.
    const btf = new Btf(Buffer.from(file.subarray(section.offset, section.offset + section.size)), path);
    btf.#fixDatasecs(sections, parseElfSymbols(file, sections));
    return btf;
  }

  /** Number of type ids, including void (id 0). */
  get typeCount(): number {
    return this.#offsets.length;
  }

  /** The id of the first type of that kind and name, if any. */
  findType(kind: BtfKind, name: string): number | undefined {
    return this.#lookup(KIND[kind], name)[0];
  }

  hasType(kind: BtfKind, name: string): boolean {
    return this.findType(kind, name) !== undefined;
  }

  /** sizeof the type, after typedefs and qualifiers. Throws for types without a size (functions, void, forward declarations). */
  typeSize(id: number): number {
    for (let depth = 0; depth < MAX_RESOLVE_DEPTH; depth++) {
      const kind = this.#kind(id);
      switch (kind) {
        case KIND.int:
        case KIND.struct:
        case KIND.union:
        case KIND.enum:
        case KIND.enum64:
        case KIND.float:
        case KIND.datasec:
          return this.#word(id, 8);
        // BPF and every arch the agent runs on are 64-bit; BTF does not record pointer size.
        case KIND.ptr:
          return 8;
        case KIND.array:
          return this.#word(id, 20) * this.typeSize(this.#word(id, 12));
        case KIND.typedef:
        case KIND.volatile:
        case KIND.const:
        case KIND.restrict:
        case KIND.type_tag:
        case KIND.var:
          id = this.#word(id, 8);
          continue;
        default:
          throw new BpfError(
            'ERR_INVALID_ARGUMENT',
            `sizing BTF type ${id} of ${this.source}: a ${KINDS[kind]} has no size`,
          );
      }
    }
    throw new BpfError('ERR_ELF', `sizing BTF type ${id} of ${this.source}: type chain is cyclic or too deep`);
  }

  /**
   * The layout of a struct (or union) by name, also found through a typedef. Members of anonymous
   * structs and unions are flattened into the list, as C's member access sees them.
   */
  structLayout(name: string): BtfStructLayout {
    const id =
      this.findType('struct', name) ??
      this.findType('union', name) ??
      this.#throughTypedef(name, [KIND.struct, KIND.union]);
    if (id === undefined) throw new BpfError('ERR_NOT_FOUND', `struct ${name} not found in BTF of ${this.source}`);
    const members: BtfMember[] = [];
    this.#collectMembers(id, 0, false, members, 0);
    return { name, size: this.#word(id, 8), members };
  }

  /** A data section's variables, e.g. `.rodata` for `volatile const` globals. */
  datasec(name: string): BtfDatasec {
    const id = this.findType('datasec', name);
    if (id === undefined) throw new BpfError('ERR_NOT_FOUND', `datasec ${name} not found in BTF of ${this.source}`);
    const vars = [];
    for (let i = 0, at = this.#tail(id); i < this.#vlen(id); i++, at += 12) {
      vars.push({
        name: this.#name(this.#word(this.#types.readUInt32LE(at), 0)),
        offset: this.#types.readUInt32LE(at + 4),
        size: this.#types.readUInt32LE(at + 8),
      });
    }
    return { name, size: this.#word(id, 8), vars };
  }

  /**
   * An enum's enumerators by name (ENUM or ENUM64, also through a typedef). ENUM64 values beyond
   * 2^53 lose precision; no enum the agent reads comes near that.
   */
  enumValues(name: string): Map<string, number> {
    const id =
      this.findType('enum', name) ?? this.findType('enum64', name) ?? this.#throughTypedef(name, [KIND.enum, KIND.enum64]);
    if (id === undefined) throw new BpfError('ERR_NOT_FOUND', `enum ${name} not found in BTF of ${this.source}`);
    const signed = this.#kindFlag(id);
    const wide = this.#kind(id) === KIND.enum64;
    const out = new Map<string, number>();
    const types = this.#types;
    for (let i = 0, at = this.#tail(id); i < this.#vlen(id); i++, at += wide ? 12 : 8) {
      const name = this.#name(types.readUInt32LE(at));
      if (!wide) {
        out.set(name, signed ? types.readInt32LE(at + 4) : types.readUInt32LE(at + 4));
      } else {
        const value = (BigInt(types.readUInt32LE(at + 8)) << 32n) | BigInt(types.readUInt32LE(at + 4));
        out.set(name, Number(signed ? BigInt.asIntN(64, value) : value));
      }
    }
    return out;
  }

  // Walks the type section once, recording where each type starts; every kind's tail has to be
  // skipped exactly, or every later id would be wrong.
  #index(fail: (why: string) => never): Uint32Array {
    const types = this.#types;
    const offsets: number[] = [0];
    let at = 0;
    while (at < types.length) {
      if (at + TYPE_HEADER_SIZE > types.length) fail(`type ${offsets.length} is truncated`);
      const info = types.readUInt32LE(at + 4);
      const kind = (info >>> 24) & 0x1f;
      const vlen = info & 0xffff;
      let tail: number;
      switch (kind) {
        case KIND.int:
        case KIND.var:
        case KIND.decl_tag:
          tail = 4;
          break;
        case KIND.array:
          tail = 12;
          break;
        case KIND.struct:
        case KIND.union:
        case KIND.datasec:
        case KIND.enum64:
          tail = 12 * vlen;
          break;
        case KIND.enum:
        case KIND.func_proto:
          tail = 8 * vlen;
          break;
        case KIND.ptr:
        case KIND.fwd:
        case KIND.typedef:
        case KIND.volatile:
        case KIND.const:
        case KIND.restrict:
        case KIND.func:
        case KIND.float:
        case KIND.type_tag:
          tail = 0;
          break;
        default:
          return fail(`type ${offsets.length} has unknown kind ${kind}`);
      }
      offsets.push(at);
      at += TYPE_HEADER_SIZE + tail;
      if (at > types.length) fail(`type ${offsets.length - 1} (${KINDS[kind]}) is truncated`);
    }
    return Uint32Array.from(offsets);
  }

  #fixDatasecs(sections: readonly ElfSection[], symbols: readonly ElfSymbol[]): void {
    const types = this.#types;
    for (let id = 1; id < this.#offsets.length; id++) {
      if (this.#kind(id) !== KIND.datasec) continue;
      // .kconfig and .ksyms have no ELF section: their externs are resolved by the loader.
      const section = sections.find((s) => s.name === this.#name(this.#word(id, 0)));
      if (!section) continue;
      if (this.#word(id, 8) === 0) types.writeUInt32LE(section.size, this.#offsets[id] + 8);
      const offsetOf = new Map(symbols.filter((s) => s.section === section.index).map((s) => [s.name, s.value]));
      for (let i = 0, at = this.#tail(id); i < this.#vlen(id); i++, at += 12) {
        const offset = offsetOf.get(this.#name(this.#word(types.readUInt32LE(at), 0)));
        if (offset !== undefined) types.writeUInt32LE(offset, at + 4);
      }
    }
  }

  #collectMembers(id: number, base: number, nested: boolean, out: BtfMember[], depth: number): void {
    if (depth > MAX_RESOLVE_DEPTH) {
      throw new BpfError('ERR_ELF', `reading struct type ${id} of ${this.source}: anonymous members nest too deep`);
    }
    const bitfieldEncoded = this.#kindFlag(id);
    for (let i = 0, at = this.#tail(id); i < this.#vlen(id); i++, at += 12) {
      const name = this.#name(this.#types.readUInt32LE(at));
      const type = this.#types.readUInt32LE(at + 4);
      const raw = this.#types.readUInt32LE(at + 8);
      let bitOffset = base + (bitfieldEncoded ? raw & 0xffffff : raw);
      let bitSize = bitfieldEncoded ? raw >>> 24 : 0;
      const resolved = this.#resolve(type);
      const kind = this.#kind(resolved);
      if (name === '' && (kind === KIND.struct || kind === KIND.union)) {
        this.#collectMembers(resolved, bitOffset, true, out, depth + 1);
        continue;
      }
      // Old-style bitfields (kind_flag clear) keep their width and shift in the INT type itself.
      if (!bitfieldEncoded && kind === KIND.int) {
        const encoding = this.#word(resolved, 12);
        const bits = encoding & 0xff;
        if (bits !== this.#word(resolved, 8) * 8 || ((encoding >>> 16) & 0xff) !== 0) {
          bitSize = bits;
          bitOffset += (encoding >>> 16) & 0xff;
        }
      }
      out.push({ name, offset: Math.floor(bitOffset / 8), bitOffset, bitSize, size: this.typeSize(type), nested });
    }
  }

  #throughTypedef(name: string, kinds: readonly number[]): number | undefined {
    for (const id of this.#lookup(KIND.typedef, name)) {
      const target = this.#resolve(id);
      if (kinds.includes(this.#kind(target))) return target;
    }
    return undefined;
  }

  /** Follows typedefs and qualifiers to the type they name. */
  #resolve(id: number): number {
    for (let depth = 0; depth < MAX_RESOLVE_DEPTH; depth++) {
      const kind = this.#kind(id);
      if (
        kind !== KIND.typedef &&
        kind !== KIND.volatile &&
        kind !== KIND.const &&
        kind !== KIND.restrict &&
        kind !== KIND.type_tag
      ) {
        return id;
      }
      id = this.#word(id, 8);
    }
    throw new BpfError('ERR_ELF', `resolving BTF type ${id} of ${this.source}: type chain is cyclic or too deep`);
  }

  #lookup(kind: number, name: string): readonly number[] {
    if (!this.#byName) {
      // Built on first use: vmlinux has ~150k types and most callers look up a handful.
      const byName = new Map<string, number[]>();
      for (let id = 1; id < this.#offsets.length; id++) {
        const nameOff = this.#word(id, 0);
        if (nameOff === 0) continue;
        const key = `${this.#kind(id)}:${this.#name(nameOff)}`;
        const ids = byName.get(key);
        if (ids) ids.push(id);
        else byName.set(key, [id]);
      }
      this.#byName = byName;
    }
    return this.#byName.get(`${kind}:${name}`) ?? [];
  }

  #checkId(id: number): number {
    if (!Number.isInteger(id) || id <= 0 || id >= this.#offsets.length) {
      throw new BpfError('ERR_INVALID_ARGUMENT', `BTF of ${this.source} has no type id ${id}`);
    }
    return this.#offsets[id];
  }

  /** A u32 of the type's record: 0 name_off, 4 info, 8 size/type, 12 onwards the tail. */
  #word(id: number, at: number): number {
    return this.#types.readUInt32LE(this.#checkId(id) + at);
  }

  #kind(id: number): number {
    return id === 0 ? KIND.void : (this.#word(id, 4) >>> 24) & 0x1f;
  }

  #vlen(id: number): number {
    return this.#word(id, 4) & 0xffff;
  }

  #kindFlag(id: number): boolean {
    return this.#word(id, 4) >>> 31 === 1;
  }

  #tail(id: number): number {
    return this.#checkId(id) + TYPE_HEADER_SIZE;
  }

  #name(offset: number): string {
    if (offset >= this.#strings.length) {
      throw new BpfError('ERR_ELF', `BTF of ${this.source}: string offset ${offset} is out of range`);
    }
    return cString(this.#strings, offset, this.#strings.length);
  }
}

// ---------------------------------------------------------------------------------------------
// Layout checks

const isPadName = (name: string): boolean => name.startsWith('_pad') || name.startsWith('pad');

/**
 * Differences between a struct codec and the C struct of the same name in BTF, one readable line
 * each; empty when they agree. Run at startup or in tests, so a C header edited without its codec
 * fails loudly instead of corrupting map entries.
 */
export function checkLayout(codec: StructCodec<Record<string, Codec<unknown>>>, btf: Btf): string[] {
  const where = `struct ${codec.name}`;
  let layout: BtfStructLayout;
  try {
    layout = btf.structLayout(codec.name);
  } catch (error) {
    if (BpfError.is(error, 'ERR_NOT_FOUND')) return [`${where}: not found in BTF of ${btf.source}`];
    throw error;
  }
  const problems: string[] = [];
  if (codec.size !== layout.size) problems.push(`${where}: size is ${codec.size} in codec, ${layout.size} in C`);

  const fields = codec.fields;
  const byName = new Map<string, BtfMember>();
  for (const member of layout.members) if (!byName.has(member.name)) byName.set(member.name, member);

  for (const field of Object.keys(fields)) {
    if ((fields[field] as Partial<PadCodec>).padding) continue;
    const member = byName.get(field);
    if (!member) {
      problems.push(`${where}: field ${field} is not a member in C`);
      continue;
    }
    if (member.bitSize > 0) {
      problems.push(`${where}: field ${field} is a ${member.bitSize}-bit bitfield in C, which a codec cannot express`);
      continue;
    }
    const offset = codec.offsets[field];
    if (offset !== member.offset) problems.push(`${where}: field ${field} is at offset ${offset} in codec, ${member.offset} in C`);
    const size = fields[field].size;
    if (size !== member.size) problems.push(`${where}: field ${field} has size ${size} in codec, ${member.size} in C`);
  }

  // Only members the codec could have named: padding and anonymous unions' alternatives aside.
  for (const member of layout.members) {
    if (member.nested || member.name === '' || isPadName(member.name) || Object.hasOwn(fields, member.name)) continue;
    problems.push(`${where}: C member ${member.name} (offset ${member.offset}, size ${member.size}) has no codec field`);
  }
  return problems;
}
