/**
 * TS codecs of the runtime sensor's C structs (bpf/runtime.h) and the decoding of its ring
 * buffer records into process lifecycle events. events.test.ts checks the codecs against the
 * object's BTF, so the two definitions cannot drift apart.
 * @module
 */
import { array, pad, struct, u16, u32, u64, u8, type StructValue } from '../ebpf/index.ts';

export const RuntimeEventType = { EXEC: 1, FORK: 2, EXIT: 3, POLICY: 4 } as const;

/** Flags of an exec event (enum runtime_exec_flag). */
export const ExecFlag = {
  TRUNC_FILENAME: 1 << 0,
  TRUNC_ARGS: 1 << 1,
  ERROR_ARGS: 1 << 2,
  TRUNC_CWD: 1 << 3,
  ERROR_CWD: 1 << 4,
  NO_AUID: 1 << 5,
} as const;

/**
 * What the kernel side captures of an exec (bpf/runtime.h): the binary's path up to 1024 bytes,
 * the argv area up to 4096 bytes (argv[0] included; longer is cut and flagged `truncArgs`), and
 * a cwd of at most 48 components or 1024 bytes (longer is flagged `truncCWD`).
 */
export const EXEC_LIMITS = { binary: 1024, args: 4096, cwd: 1024, cwdDepth: 48 } as const;

/** Namespace slots of runtime_exec_event.ns, in Tetragon's `Namespaces` order. */
export const NAMESPACES = ['uts', 'ipc', 'mnt', 'pid', 'pid_for_children', 'net', 'time', 'time_for_children', 'cgroup', 'user'] as const;
export type NamespaceName = (typeof NAMESPACES)[number];

/** Capability names by bit (linux/capability.h), as tetragon.CapabilitiesType names them (bit 1 is
 * DAC_OVERRIDE there, without the CAP_ prefix). */
export const CAPABILITIES = [
  'CAP_CHOWN', 'DAC_OVERRIDE', 'CAP_DAC_READ_SEARCH', 'CAP_FOWNER', 'CAP_FSETID', 'CAP_KILL', 'CAP_SETGID', 'CAP_SETUID',
  'CAP_SETPCAP', 'CAP_LINUX_IMMUTABLE', 'CAP_NET_BIND_SERVICE', 'CAP_NET_BROADCAST', 'CAP_NET_ADMIN', 'CAP_NET_RAW',
  'CAP_IPC_LOCK', 'CAP_IPC_OWNER', 'CAP_SYS_MODULE', 'CAP_SYS_RAWIO', 'CAP_SYS_CHROOT', 'CAP_SYS_PTRACE', 'CAP_SYS_PACCT',
  'CAP_SYS_ADMIN', 'CAP_SYS_BOOT', 'CAP_SYS_NICE', 'CAP_SYS_RESOURCE', 'CAP_SYS_TIME', 'CAP_SYS_TTY_CONFIG', 'CAP_MKNOD',
  'CAP_LEASE', 'CAP_AUDIT_WRITE', 'CAP_AUDIT_CONTROL', 'CAP_SETFCAP', 'CAP_MAC_OVERRIDE', 'CAP_MAC_ADMIN', 'CAP_SYSLOG',
  'CAP_WAKE_ALARM', 'CAP_BLOCK_SUSPEND', 'CAP_AUDIT_READ', 'CAP_PERFMON', 'CAP_BPF', 'CAP_CHECKPOINT_RESTORE',
] as const;

const header = {
  type: u8,
  _pad0: pad(1),
  flags: u16,
  pid: u32,
  tid: u32,
  ppid: u32,
  ktime: u64,
};

export const runtimeExecEvent = struct('runtime_exec_event', {
  ...header,
  uid: u32,
  euid: u32,
  gid: u32,
  auid: u32,
  cap_effective: u64,
  cap_permitted: u64,
  cap_inheritable: u64,
  cgroup_id: u64,
  nspid: u32,
  ns: array(u32, NAMESPACES.length),
  binary_len: u16,
  args_len: u16,
  cwd_len: u16,
  _pad1: pad(2),
  args_size: u32,
});

export const runtimeForkEvent = struct('runtime_fork_event', header);

export const runtimeExitEvent = struct('runtime_exit_event', { ...header, exit_code: u32, _pad1: pad(4) });

/** A TracingPolicy hook's matching call (bpf/runtime.h): 5 argument slots of 256 bytes follow. */
export const runtimePolicyEvent = struct('runtime_policy_event', {
  ...header,
  hook: u32,
  policy_id: u32,
  selector: u8,
  action: u8,
  _pad1: pad(2),
  arg_flags: u32,
  values: array(u64, 5),
});
export const POLICY_ARG_SLOT = 256;

export interface PolicyRecord {
  type: 'policy';
  pid: number;
  tid: number;
  ppid: number;
  ktime: bigint;
  hook: number;
  policyId: number;
  selector: number;
  action: number;
  /** 4 bits per argument: 1 truncated, 2 unreadable. */
  argFlags: number;
  /** Numbers; a string's length; a sockaddr's family. */
  values: bigint[];
  /** The argument slots (a copy): strings' bytes, sockaddrs as family, port, address. */
  slots: Buffer;
}

export interface ExecRecord {
  type: 'exec';
  pid: number;
  tid: number;
  ppid: number;
  ktime: bigint;
  uid: number;
  euid: number;
  gid: number;
  auid: number;
  caps: { effective: bigint; permitted: bigint; inheritable: bigint };
  cgroupId: bigint;
  nspid: number;
  ns: Record<NamespaceName, number>;
  /** The path as exec'd (bprm->filename). */
  binary: string;
  /** argv[1..], as the process received them. */
  args: string[];
  /** Absolute working directory, or '' when it could not be read. */
  cwd: string;
  flags: number;
  /** The whole argv area's size in bytes, before truncation. */
  argsSize: number;
}

export interface ForkRecord {
  type: 'fork';
  pid: number;
  ppid: number;
  ktime: bigint;
}

export interface ExitRecord {
  type: 'exit';
  pid: number;
  tid: number;
  ppid: number;
  ktime: bigint;
  /** wait(2) status: exit status in bits 8..15, terminating signal in bits 0..6. */
  exitCode: number;
}

export type RuntimeRecord = ExecRecord | ForkRecord | ExitRecord | PolicyRecord;

const NUL = 0;

/** NUL-separated strings; a last string cut without its NUL is kept. */
function splitStrings(bytes: Buffer): string[] {
  const out: string[] = [];
  let start = 0;
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] !== NUL) continue;
    out.push(bytes.toString('utf8', start, i));
    start = i + 1;
  }
  if (start < bytes.length) out.push(bytes.toString('utf8', start));
  return out;
}

function decodeExec(event: StructValue<typeof runtimeExecEvent.fields>, data: Buffer): ExecRecord {
  const binaryEnd = Math.min(event.binary_len, data.length);
  const binary = splitStrings(data.subarray(0, binaryEnd))[0] ?? '';
  const argsEnd = Math.min(binaryEnd + event.args_len, data.length);
  // The argv area holds argv[0] first; Tetragon's `arguments` are the rest.
  const args = splitStrings(data.subarray(binaryEnd, argsEnd)).slice(1);
  const components = splitStrings(data.subarray(argsEnd, Math.min(argsEnd + event.cwd_len, data.length)));
  const cwdError = (event.flags & ExecFlag.ERROR_CWD) !== 0;
  const cwd = cwdError && components.length === 0 ? '' : '/' + components.reverse().join('/');
  const ns = {} as Record<NamespaceName, number>;
  NAMESPACES.forEach((name, i) => (ns[name] = event.ns[i]));
  return {
    type: 'exec',
    pid: event.pid,
    tid: event.tid,
    ppid: event.ppid,
    ktime: event.ktime,
    uid: event.uid,
    euid: event.euid,
    gid: event.gid,
    auid: event.auid,
    caps: { effective: event.cap_effective, permitted: event.cap_permitted, inheritable: event.cap_inheritable },
    cgroupId: event.cgroup_id,
    nspid: event.nspid,
    ns,
    binary,
    args,
    cwd,
    flags: event.flags,
    argsSize: event.args_size,
  };
}

/** Decodes one ring buffer record; undefined for a record of a type this reader does not know. */
export function decodeRuntimeRecord(record: Buffer): RuntimeRecord | undefined {
  switch (record[0]) {
    case RuntimeEventType.EXEC: {
      if (record.length < runtimeExecEvent.size) return undefined;
      const event = runtimeExecEvent.decode(record, 0);
      return decodeExec(event, record.subarray(runtimeExecEvent.size));
    }
    case RuntimeEventType.FORK: {
      if (record.length < runtimeForkEvent.size) return undefined;
      const event = runtimeForkEvent.decode(record, 0);
      return { type: 'fork', pid: event.pid, ppid: event.ppid, ktime: event.ktime };
    }
    case RuntimeEventType.EXIT: {
      if (record.length < runtimeExitEvent.size) return undefined;
      const event = runtimeExitEvent.decode(record, 0);
      return { type: 'exit', pid: event.pid, tid: event.tid, ppid: event.ppid, ktime: event.ktime, exitCode: event.exit_code };
    }
    case RuntimeEventType.POLICY: {
      if (record.length < runtimePolicyEvent.size) return undefined;
      const e = runtimePolicyEvent.decode(record, 0);
      return {
        type: 'policy',
        pid: e.pid,
        tid: e.tid,
        ppid: e.ppid,
        ktime: e.ktime,
        hook: e.hook,
        policyId: e.policy_id,
        selector: e.selector,
        action: e.action,
        argFlags: e.arg_flags,
        values: e.values,
        slots: Buffer.from(record.subarray(runtimePolicyEvent.size)),
      };
    }
    default:
      return undefined;
  }
}
