/**
 * Loading clang-built BPF ELF objects. libbpf parses the ELF, applies CO-RE relocations and loads
 * the programs; this module adds what a long-lived agent needs around it: constants written into
 * .rodata before load (one object serves many endpoints), maps shared through bpffs pins (a
 * restarted agent finds its datapath intact), and verifier logs carried by the error.
 * @module
 */
import { existsSync, unlinkSync } from 'node:fs';
import { basename, join } from 'node:path';
import koffi from 'koffi';
import { Btf } from './btf.ts';
import { BpfError, VerifierError, errorFromErrno } from './errors.ts';
import { BpfMap, mapInfo, objGet } from './map.ts';
import { Program } from './program.ts';
import { unsupportedFeatureFor } from './link/tracing.ts';
import type { ProgramType } from './internal/constants.ts';
import { Errno } from './internal/constants.ts';
import { libbpf, libbpfMessages, isNull, str, OpenOpts, type Handle } from './internal/libbpf.ts';
import { addressOf, close, cString, dup } from './internal/sys.ts';

export type ConstantValue = number | bigint | boolean | Buffer;

export interface LoadOptions {
  /** Values for `volatile const` globals, by name, written into .rodata before load. */
  constants?: Record<string, ConstantValue>;
  /**
   * Maps to share through bpffs: each named map is pinned at `<dir>/<name>`. When a pin already
   * exists it is reused (its shape must match), so state survives a restart of the loader.
   */
  pin?: {
    dir: string;
    maps: readonly string[];
    /**
     * A pin whose map no longer has the object's shape (type, key or value size, entries, flags:
     * a newer build changed it) is unpinned so a new map is made, and this is told why: the old
     * map's contents are lost, as with Cilium's upgrade of an incompatible map. Without it such a
     * load fails with ERR_PIN_MISMATCH naming the map and what differs.
     */
    onIncompatible?: (map: string, reason: string) => void;
  };
  /** Override max_entries per map name, e.g. sized from configuration. */
  maxEntries?: Record<string, number>;
  /** Load only these programs (by function name); others in the object are skipped. */
  programs?: readonly string[];
  /** Bytes for the verifier log kept when a load fails. */
  logSize?: number;
}

/**
 * A loaded BPF object: its programs and maps, by name. Closing it releases what is not pinned
 * or attached through a link.
 *
 * @example
 * using obj = BpfObject.load('build/bpf/demo.o', { constants: { ENDPOINT_ID: 12 } });
 * const prog = obj.program('demo_ingress');
 */
export class BpfObject implements Disposable {
  readonly path: string;
  readonly programs: ReadonlyMap<string, Program>;
  readonly maps: ReadonlyMap<string, BpfMap>;
  #handle: Handle | null;

  private constructor(path: string, handle: Handle, programs: Map<string, Program>, maps: Map<string, BpfMap>) {
    this.path = path;
    this.#handle = handle;
    this.programs = programs;
    this.maps = maps;
  }

  static load(path: string, options: LoadOptions = {}): BpfObject {
    if (!existsSync(path)) throw new BpfError('ERR_ELF', `loading BPF object ${path}: no such file (was the BPF build run?)`);
    // Not zeroed: the kernel writes it only when a load fails (see below), and zeroing 4 MiB per
    // object was a visible share of an agent adding pods (memset, page faults, GC pressure for an
    // external buffer). The leading NUL makes an untouched buffer read as an empty log.
    const logBuffer = Buffer.allocUnsafeSlow(options.logSize ?? 4 << 20);
    logBuffer[0] = 0;
    const objectName = cString(basename(path, '.o'));
    const opts = Buffer.alloc(OpenOpts.size);
    opts.writeBigUInt64LE(BigInt(OpenOpts.size), 0);
    opts.writeBigUInt64LE(addressOf(objectName), OpenOpts.objectName);
    opts.writeBigUInt64LE(addressOf(logBuffer), OpenOpts.kernelLogBuf);
    opts.writeBigUInt64LE(BigInt(logBuffer.length), OpenOpts.kernelLogSize);
    // Level 0: no log on success; on failure libbpf retries at level 1 into our buffer.
    opts.writeUInt32LE(0, OpenOpts.kernelLogLevel);

    libbpfMessages.length = 0;
    const handle = libbpf.openFile(path, opts);
    if (isNull(handle)) {
      throw new BpfError('ERR_ELF', `opening BPF object ${path}: ${libbpfMessages.at(-1) ?? 'libbpf could not parse it'}`, {
        errno: koffi.errno(),
      });
    }
    try {
      configure(path, handle, options);
      const ret = libbpf.load(handle) as number;
      if (ret < 0) throw loadError(path, -ret, logBuffer, handle);
      return new BpfObject(path, handle, collectPrograms(handle), collectMaps(handle));
    } catch (error) {
      libbpf.closeObject(handle);
      throw error;
    }
  }

  program(name: string): Program {
    const prog = this.programs.get(name);
    if (!prog) throw new BpfError('ERR_NOT_FOUND', `${this.path}: no program named ${name} (have ${[...this.programs.keys()].join(', ')})`);
    return prog;
  }

  map(name: string): BpfMap {
    const map = this.maps.get(name);
    if (!map) throw new BpfError('ERR_NOT_FOUND', `${this.path}: no map named ${name} (have ${[...this.maps.keys()].join(', ')})`);
    return map;
  }

  close(): void {
    if (this.#handle === null) return;
    for (const prog of this.programs.values()) prog.close();
    for (const map of this.maps.values()) map.close();
    libbpf.closeObject(this.#handle);
    this.#handle = null;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function* each(next: (obj: Handle, prev: Handle | null) => Handle, handle: Handle): Generator<Handle> {
  for (let item = next(handle, null); !isNull(item); item = next(handle, item)) yield item;
}

function configure(path: string, handle: Handle, options: LoadOptions): void {
  const wanted = options.programs ? new Set(options.programs) : undefined;
  if (wanted) {
    const unknown = new Set(wanted);
    const have: string[] = [];
    for (const prog of each(libbpf.nextProgram, handle)) {
      const name = str(libbpf.programName(prog));
      have.push(name);
      unknown.delete(name);
      libbpf.programSetAutoload(prog, wanted.has(name));
    }
    // A misspelt name would otherwise load an object without the program, silently.
    if (unknown.size > 0) {
      throw new BpfError('ERR_NOT_FOUND', `${path}: no programs named ${[...unknown].join(', ')} (have ${have.join(', ')})`);
    }
  }
  const pinned = new Set(options.pin?.maps ?? []);
  let rodata: Handle | undefined;
  for (const map of each(libbpf.nextMap, handle)) {
    const name = str(libbpf.mapName(map));
    if (name.endsWith('.rodata')) rodata = map;
    const maxEntries = options.maxEntries?.[name];
    if (maxEntries !== undefined) libbpf.mapSetMaxEntries(map, maxEntries);
    if (options.pin && pinned.delete(name)) {
      const pinPath = join(options.pin.dir, name);
      if (existsSync(pinPath)) replaceIfIncompatible(path, name, map, pinPath, options.pin.onIncompatible);
      if (libbpf.mapSetPinPath(map, pinPath) < 0) {
        throw errorFromErrno(`${path}: setting pin path of map ${name}`, koffi.errno());
      }
    }
  }
  if (pinned.size > 0) throw new BpfError('ERR_NOT_FOUND', `${path}: cannot pin unknown maps ${[...pinned].join(', ')}`);
  if (options.constants && Object.keys(options.constants).length > 0) {
    if (!rodata) throw new BpfError('ERR_NOT_FOUND', `${path}: has no .rodata, so constants ${Object.keys(options.constants).join(', ')} cannot be set`);
    writeConstants(path, rodata, options.constants);
  }
}

/** What differs between a pinned map and the object's definition of it, or undefined. */
function pinnedMapMismatch(map: Handle, pinPath: string): string | undefined {
  const fd = objGet(pinPath, `opening pinned map ${pinPath}`);
  try {
    const pinned = mapInfo(fd);
    const wanted = {
      type: libbpf.mapType(map) as number,
      keySize: libbpf.mapKeySize(map) as number,
      valueSize: libbpf.mapValueSize(map) as number,
      maxEntries: libbpf.mapMaxEntries(map) as number,
      flags: libbpf.mapFlags(map) as number,
    };
    const differences = (Object.keys(wanted) as (keyof typeof wanted)[])
      .filter((field) => pinned[field] !== wanted[field])
      .map((field) => `${field} ${pinned[field]} pinned, ${wanted[field]} wanted`);
    return differences.length > 0 ? differences.join(', ') : undefined;
  } finally {
    close(fd);
  }
}

function replaceIfIncompatible(path: string, name: string, map: Handle, pinPath: string, onIncompatible: ((map: string, reason: string) => void) | undefined): void {
  const mismatch = pinnedMapMismatch(map, pinPath);
  if (mismatch === undefined) return;
  if (!onIncompatible) throw new BpfError('ERR_PIN_MISMATCH', `${path}: pinned map ${pinPath} does not fit map ${name}: ${mismatch}`);
  // Programs still holding the old map keep it until they are replaced; the pin gets the new one.
  unlinkSync(pinPath);
  onIncompatible(name, mismatch);
}

function writeConstants(path: string, rodata: Handle, constants: Record<string, ConstantValue>): void {
  const section = Btf.fromElf(path).datasec('.rodata');
  const sizeOut = [0];
  const pointer = libbpf.mapInitialValue(rodata, sizeOut);
  if (isNull(pointer)) throw new BpfError('ERR_ELF', `${path}: cannot reach the initial value of .rodata`);
  const data = Buffer.from(koffi.view(pointer, sizeOut[0]) as ArrayBuffer);
  for (const [name, value] of Object.entries(constants)) {
    const variable = section.vars.find((v) => v.name === name);
    if (!variable) {
      throw new BpfError('ERR_NOT_FOUND', `${path}: no constant named ${name} in .rodata (have ${section.vars.map((v) => v.name).join(', ')})`);
    }
    writeScalar(data, variable.offset, variable.size, value, `${path}: constant ${name}`);
  }
}

function writeScalar(data: Buffer, offset: number, size: number, value: ConstantValue, context: string): void {
  if (Buffer.isBuffer(value)) {
    if (value.length !== size) throw new BpfError('ERR_CODEC', `${context}: is ${size} bytes, got ${value.length}`);
    value.copy(data, offset);
    return;
  }
  if (typeof value === 'number' && !Number.isInteger(value)) {
    throw new BpfError('ERR_CODEC', `${context}: ${value} is not an integer`);
  }
  const big = typeof value === 'boolean' ? (value ? 1n : 0n) : BigInt(value);
  const bits = BigInt(size * 8);
  if (big >= 1n << bits || big < -(1n << (bits - 1n))) throw new BpfError('ERR_CODEC', `${context}: ${value} does not fit in ${size} bytes`);
  const unsigned = BigInt.asUintN(size * 8, big);
  for (let i = 0; i < size; i++) data[offset + i] = Number((unsigned >> BigInt(8 * i)) & 0xffn);
}

function loadError(path: string, errno: number, logBuffer: Buffer, handle: Handle): BpfError {
  const failed = libbpfMessages.map((m) => /prog '([^']+)': failed to load/.exec(m)?.[1]).find(Boolean);
  const logEnd = logBuffer.indexOf(0);
  const log = logBuffer.toString('utf8', 0, logEnd < 0 ? logBuffer.length : logEnd);
  if (failed && log.length > 0) return new VerifierError(`${failed} from ${path}`, errno, log);
  const context = `loading BPF object ${path}${libbpfMessages.length ? ` (${libbpfMessages.slice(-3).join(' | ')})` : ''}`;
  if (errno === Errno.EPERM && failed) {
    // fentry/fexit/LSM on kernels that refuse them fail with EPERM before the verifier runs.
    const refused = errorFromErrno(`${context}: program ${failed} was refused before verification`, errno);
    const prog = [...each(libbpf.nextProgram, handle)].find((p) => str(libbpf.programName(p)) === failed);
    return (prog === undefined ? undefined : unsupportedFeatureFor(str(libbpf.programSection(prog)), refused)) ?? refused;
  }
  return errorFromErrno(context, errno);
}

function collectPrograms(handle: Handle): Map<string, Program> {
  const programs = new Map<string, Program>();
  for (const prog of each(libbpf.nextProgram, handle)) {
    const fd = libbpf.programFd(prog) as number;
    if (fd < 0) continue; // not loaded (autoload off)
    const name = str(libbpf.programName(prog));
    programs.set(
      name,
      new Program(dup(fd, `taking program ${name}`), {
        name,
        section: str(libbpf.programSection(prog)),
        type: libbpf.programType(prog) as ProgramType,
        expectedAttachType: libbpf.programExpectedAttachType(prog) as number,
        libbpfHandle: prog,
      }),
    );
  }
  return programs;
}

function collectMaps(handle: Handle): Map<string, BpfMap> {
  const maps = new Map<string, BpfMap>();
  for (const map of each(libbpf.nextMap, handle)) {
    const fd = libbpf.mapFd(map) as number;
    if (fd < 0) continue;
    const name = str(libbpf.mapName(map));
    maps.set(name, BpfMap.fromFd(dup(fd, `taking map ${name}`)));
  }
  return maps;
}
