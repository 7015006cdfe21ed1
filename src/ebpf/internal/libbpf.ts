/**
 * Bindings to libbpf.so.1 (Debian's libbpf1), used for what it does best: parsing ELF objects,
 * CO-RE relocation against the kernel's BTF, and attaching tracing programs by section name.
 * Everything else goes through raw bpf(2) in sys.ts.
 * @module
 */
import { isMainThread } from 'node:worker_threads';
import koffi from 'koffi';

const lib = koffi.load('libbpf.so.1');
const libc = koffi.load('libc.so.6');

export const BpfObjectPtr = koffi.opaque('bpf_object');
export const BpfProgramPtr = koffi.opaque('bpf_program');
export const BpfMapPtr = koffi.opaque('bpf_map');
export const BpfLinkPtr = koffi.opaque('bpf_link');

export type Handle = unknown;

export const libbpf = {
  openFile: lib.func('bpf_object *bpf_object__open_file(const char *path, void *opts)'),
  load: lib.func('int bpf_object__load(bpf_object *obj)'),
  closeObject: lib.func('void bpf_object__close(bpf_object *obj)'),
  nextProgram: lib.func('bpf_program *bpf_object__next_program(bpf_object *obj, bpf_program *prev)'),
  nextMap: lib.func('bpf_map *bpf_object__next_map(bpf_object *obj, bpf_map *prev)'),
  programName: lib.func('const char *bpf_program__name(bpf_program *prog)'),
  programSection: lib.func('const char *bpf_program__section_name(bpf_program *prog)'),
  programFd: lib.func('int bpf_program__fd(bpf_program *prog)'),
  programType: lib.func('int bpf_program__type(bpf_program *prog)'),
  programSetAutoload: lib.func('int bpf_program__set_autoload(bpf_program *prog, bool autoload)'),
  programExpectedAttachType: lib.func('int bpf_program__expected_attach_type(bpf_program *prog)'),
  mapName: lib.func('const char *bpf_map__name(bpf_map *map)'),
  mapFd: lib.func('int bpf_map__fd(bpf_map *map)'),
  mapInitialValue: lib.func('void *bpf_map__initial_value(bpf_map *map, _Out_ size_t *size)'),
  mapSetMaxEntries: lib.func('int bpf_map__set_max_entries(bpf_map *map, uint32_t max)'),
  mapSetPinPath: lib.func('int bpf_map__set_pin_path(bpf_map *map, const char *path)'),
  mapType: lib.func('int bpf_map__type(bpf_map *map)'),
  mapKeySize: lib.func('uint32_t bpf_map__key_size(bpf_map *map)'),
  mapValueSize: lib.func('uint32_t bpf_map__value_size(bpf_map *map)'),
  mapMaxEntries: lib.func('uint32_t bpf_map__max_entries(bpf_map *map)'),
  mapFlags: lib.func('uint32_t bpf_map__map_flags(bpf_map *map)'),
  mapIsPinned: lib.func('bool bpf_map__is_pinned(bpf_map *map)'),
  mapReuseFd: lib.func('int bpf_map__reuse_fd(bpf_map *map, int fd)'),
  attach: lib.func('bpf_link *bpf_program__attach(bpf_program *prog)'),
  attachUprobe: lib.func(
    'bpf_link *bpf_program__attach_uprobe_opts(bpf_program *prog, int pid, const char *path, size_t offset, void *opts)',
  ),
  linkFd: lib.func('int bpf_link__fd(bpf_link *link)'),
  linkDestroy: lib.func('int bpf_link__destroy(bpf_link *link)'),
  linkDisconnect: lib.func('void bpf_link__disconnect(bpf_link *link)'),
};

const vsnprintf = libc.func('int vsnprintf(_Out_ uint8_t *buf, size_t size, const char *fmt, void *args)');
const PrintFn = koffi.proto('int libbpf_print_fn(int level, const char *fmt, void *args)');
const setPrint = lib.func('void *libbpf_set_print(libbpf_print_fn *fn)');

/** libbpf's messages, collected instead of printed, so they can be attached to the error they explain. */
export const libbpfMessages: string[] = [];
const MAX_MESSAGES = 200;
const formatBuffer = Buffer.alloc(4096);
const LIBBPF_DEBUG = 2;

// libbpf calls this synchronously from inside bpf_object__open/load, on the JS thread.
const printCallback = koffi.register((level: number, fmt: string, args: unknown) => {
  if (level === LIBBPF_DEBUG) return 0;
  const length = vsnprintf(formatBuffer, formatBuffer.length, fmt, args) as number;
  libbpfMessages.push(formatBuffer.toString('utf8', 0, Math.min(length, formatBuffer.length - 1)).trimEnd());
  if (libbpfMessages.length > MAX_MESSAGES) libbpfMessages.splice(0, libbpfMessages.length - MAX_MESSAGES);
  return 0;
}, koffi.pointer(PrintFn));
// The print function is process-wide: one registered from a worker thread would be called after
// that worker exits and abort the process. Only the main thread routes libbpf's messages to us.
if (isMainThread) setPrint(printCallback);

/** Reads a C string returned by libbpf (koffi already decodes `const char *`). */
export function str(value: unknown): string {
  return typeof value === 'string' ? value : '';
}

export function isNull(pointer: unknown): boolean {
  return pointer === null || pointer === undefined || koffi.address(pointer as object) === 0n;
}

export function errno(): number {
  return koffi.errno();
}

/** struct bpf_object_open_opts of libbpf 1.1 (sizes checked against the header with gcc). */
export const OpenOpts = { size: 80, objectName: 8, kernelLogBuf: 56, kernelLogSize: 64, kernelLogLevel: 72 } as const;
/** struct bpf_uprobe_opts of libbpf 1.1. */
export const UprobeOpts = { size: 40, refCtrOffset: 8, cookie: 16, retprobe: 24, funcName: 32 } as const;
