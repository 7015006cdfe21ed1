/**
 * Offsets inside `union bpf_attr` and the info structs, per command (include/uapi/linux/bpf.h).
 * Each attr buffer is sized to the largest member the library writes; the kernel zero-checks the rest.
 * @module
 */

export const MapCreateAttr = {
  mapType: 0, keySize: 4, valueSize: 8, maxEntries: 12, mapFlags: 16, innerMapFd: 20, numaNode: 24,
  mapName: 28, mapIfindex: 44, btfFd: 48, btfKeyTypeId: 52, btfValueTypeId: 56, mapExtra: 64, size: 72,
} as const;

export const MapElemAttr = { mapFd: 0, key: 8, value: 16, flags: 24, size: 32 } as const;

export const MapBatchAttr = {
  inBatch: 0, outBatch: 8, keys: 16, values: 24, count: 32, mapFd: 36, elemFlags: 40, flags: 48, size: 56,
} as const;

export const ObjAttr = { pathname: 0, bpfFd: 8, fileFlags: 12, size: 16 } as const;

/** BPF_PROG_GET_FD_BY_ID (and the map, link and BTF variants): the id, then next_id and open_flags. */
export const GetFdByIdAttr = { id: 0, nextId: 4, openFlags: 8, size: 12 } as const;

export const InfoAttr = { bpfFd: 0, infoLen: 4, info: 8, size: 16 } as const;

export const MapInfo = {
  type: 0, id: 4, keySize: 8, valueSize: 12, maxEntries: 16, mapFlags: 20, name: 24, size: 88,
} as const;

export const ProgInfo = { type: 0, id: 4, tag: 8, name: 64, runTimeNs: 192, runCnt: 200, size: 232 } as const;

export const LinkInfo = { type: 0, id: 4, progId: 8, union: 16, size: 64 } as const;

export const TestRunAttr = {
  progFd: 0, retval: 4, dataSizeIn: 8, dataSizeOut: 12, dataIn: 16, dataOut: 24, repeat: 32, duration: 36,
  ctxSizeIn: 40, ctxSizeOut: 44, ctxIn: 48, ctxOut: 56, flags: 64, cpu: 68, batchSize: 72, size: 80,
} as const;

export const LinkCreateAttr = {
  progFd: 0, target: 4, attachType: 8, flags: 12, relative: 16, expectedRevision: 24, perfCookie: 16, size: 64,
} as const;

export const LinkDetachAttr = { linkFd: 0, size: 4 } as const;

export const LinkUpdateAttr = { linkFd: 0, newProgFd: 4, flags: 8, oldProgFd: 12, size: 16 } as const;

export const ProgQueryAttr = {
  target: 0, attachType: 4, queryFlags: 8, attachFlags: 12, progIds: 16, count: 24, progAttachFlags: 32,
  linkIds: 40, linkAttachFlags: 48, revision: 56, size: 64,
} as const;

export const ProgLoadAttr = {
  progType: 0, insnCnt: 4, insns: 8, license: 16, logLevel: 24, logSize: 28, logBuf: 32, kernVersion: 40,
  progFlags: 44, progName: 48, progIfindex: 64, expectedAttachType: 68, attachBtfId: 108, size: 144,
} as const;

export const RawTracepointAttr = { name: 0, progFd: 8, cookie: 16, size: 24 } as const;
