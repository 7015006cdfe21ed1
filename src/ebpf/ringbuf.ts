/**
 * A BPF_MAP_TYPE_RINGBUF reader in TypeScript, over the ring's own mmap'd memory.
 *
 * Why not libbpf's ring_buffer__consume: it calls back into JS once per record, and a koffi
 * callback costs about 2 µs, which caps a reader near 0.5 M records/s. Here the ring is read
 * directly: the consumer page is mapped read-write, the producer page and the data area read-only,
 * and every record is handed to a JS function as a (DataView, offset, length) triple over the
 * mapped memory, with no copy and no FFI call per record. Positions are read with Atomics.load
 * and the consumer position written back with Atomics.store, once per drained batch.
 *
 * Layout (kernel/bpf/ringbuf.c): page 0 holds consumer_pos (written by user space), page 1
 * producer_pos (written by the kernel), and from page 2 the data area, which the kernel maps twice
 * back to back, so a record that runs over the end of the ring is still contiguous in our view.
 * Each record is an 8-byte header (u32 length with the BUSY and DISCARD bits, u32 page offset),
 * then the data, padded to 8 bytes.
 *
 * Waking: `start()` puts the map's fd into libuv's own epoll set through `koffi.node.poll`, so
 * records arrive as ordinary event-loop callbacks and the loop is never blocked. That koffi API is
 * undocumented; when it is missing, or with `wakeup: 'thread'`, a worker thread blocks in
 * epoll_wait instead and pings the main thread.
 *
 * Lost records: the kernel does not count reservations that failed. By this project's convention
 * (src/ebpf/include/ringbuf_lost.h) producers count them in a per-CPU array of one __u64;
 * pass that map as `lostCounter` and `lost()`/`stats()` report it.
 *
 * @example
 * using ring = new RingBuffer(obj.map('events'), { lostCounter: obj.map('events_lost') });
 * ring.start((view, offset, length) => {
 *   const seq = view.getBigUint64(offset, true); // read now: the bytes are reused after the call
 * });
 * @module
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import koffi from 'koffi';
import { BpfError, errorFromErrno } from './errors.ts';
import { possibleCpus, type BpfMap } from './map.ts';
import { BpfCommand, MapType } from './internal/constants.ts';
import { MapElemAttr } from './internal/attr.ts';
import { addressOf, bpf, close, dup, mmap, munmap, PAGE_SIZE, PROT_READ, PROT_WRITE, view } from './internal/sys.ts';

/** Set in a header while the producer still writes the record: the reader must stop there. */
const BUSY_BIT = 1 << 31;
/** Set by bpf_ringbuf_discard(): the reader skips the record but consumes its space. */
const DISCARD_BIT = 1 << 30;
const LENGTH_MASK = ~(BUSY_BIT | DISCARD_BIT);
const HEADER_SIZE = 8;

/**
 * Receives one record: `length` bytes at `offset` in `view` (and in `bytes`, the same memory as a
 * Uint8Array). Zero copy: the memory belongs to the ring and may be overwritten by the producer as
 * soon as the batch the record is in has been consumed, so read or copy what you need during the
 * call. Return `false` to stop after this record (the rest stays in the ring for the next call).
 */
export type RecordHandler = (view: DataView, offset: number, length: number, bytes: Uint8Array) => void | boolean;

/** How a started reader learns that records arrived. */
export type WakeupMode = 'poll' | 'thread';

export interface RingBufferOptions {
  /**
   * The producer's count of records it could not reserve: a BPF_MAP_TYPE_PERCPU_ARRAY with a u32
   * key and one u64 value at key 0 (DEFINE_RINGBUF_LOST_MAP in src/ebpf/include/ringbuf_lost.h).
   */
  lostCounter?: BpfMap<unknown, unknown>;
}

export interface StartOptions {
  /**
   * 'poll' (default when available): the fd sits in libuv's epoll through koffi.node.poll.
   * 'thread': a worker thread blocks in epoll_wait; for when koffi.node.poll is unusable.
   */
  wakeup?: WakeupMode;
  /**
   * Most records handled per wakeup before yielding to the event loop; the rest are read on the
   * next turn (epoll is level-triggered, so nothing is forgotten). Bounds the time timers and I/O
   * wait behind a burst. Default 16384.
   */
  budget?: number;
  /**
   * Also read every this many milliseconds, whether or not the kernel woke the reader. For
   * producers that submit with BPF_RB_NO_WAKEUP until a batch has built up
   * (ringbuf_submit_batched in src/ebpf/include/ringbuf_lost.h): the timer bounds how long a lone
   * record waits. Default: no timer.
   */
  drainIntervalMs?: number;
  /**
   * Called with what a handler threw, or with a wakeup failure. Without it the error is rethrown
   * from the event-loop callback, where it becomes an uncaught exception. The throwing record
   * counts as consumed either way, so a record that always throws cannot wedge the reader.
   */
  onError?: (error: unknown) => void;
}

export interface RecordsOptions {
  wakeup?: WakeupMode;
  /** As in StartOptions. */
  drainIntervalMs?: number;
  /** Records copied out and not yet taken by the loop above which reading pauses. Default 4096. */
  highWaterMark?: number;
}

export interface RingBufferStats {
  /** Records handed to handlers since this reader was opened. */
  records: number;
  /** Payload bytes of those records (without headers and padding). */
  bytes: number;
  /** Records the producer discarded (bpf_ringbuf_discard), skipped by the reader. */
  discarded: number;
  /** The lost counter's total over all CPUs (0n without a lostCounter). */
  lost: bigint;
}

const DEFAULT_BUDGET = 16384;
const DEFAULT_HIGH_WATER_MARK = 4096;

/** Something that calls `onReadable` when the ring may hold records: koffi's poll or a thread. */
interface Waker {
  pause(): void;
  resume(): void;
  ref(): void;
  unref(): void;
  close(): void;
}

/**
 * A consumer of one BPF ring buffer. One reader per ring: the kernel keeps a single consumer
 * position, and two readers would each skip what the other consumed.
 */
export class RingBuffer implements Disposable, AsyncIterable<Buffer> {
  /** The map's name, for messages. */
  readonly name: string;
  /** Bytes in the data area (the map's max_entries, a power of two). */
  readonly size: number;
  readonly #fd: number;
  readonly #lostFd: number;
  readonly #consumerAddress: bigint;
  readonly #producerAddress: bigint;
  readonly #producerLength: number;
  /** The mapped memory. Detached on close, so a view kept past close() throws instead of faulting. */
  #consumerBuffer: ArrayBuffer;
  #producerBuffer: ArrayBuffer;
  readonly #consumerPos: BigUint64Array;
  readonly #producerPos: BigUint64Array;
  /** The whole producer mapping as 32-bit words, for the acquire-load of record headers. */
  readonly #words: Int32Array;
  readonly #view: DataView;
  readonly #bytes: Uint8Array;
  #records = 0;
  #recordBytes = 0;
  #discarded = 0;
  #consuming = false;
  #closed = false;
  #waker: Waker | undefined;
  /** Ends a running records() loop when the reader is stopped or closed. */
  #onStop: (() => void) | undefined;
  readonly #lostAttr: Buffer | undefined;
  readonly #lostKey = Buffer.alloc(8);
  readonly #lostValue: Buffer | undefined;
  #finalLost = 0n;

  constructor(map: BpfMap<unknown, unknown>, options: RingBufferOptions = {}) {
    const name = map.name || `fd ${map.fd}`;
    const context = `mapping ring buffer ${name}`;
    if (map.type !== MapType.RINGBUF) {
      const hint = map.type === MapType.USER_RINGBUF ? ' (a user ring buffer is written from user space, not read)' : '';
      throw new BpfError(
        'ERR_INVALID_ARGUMENT',
        `${context}: map is ${mapTypeName(map.type)}, not BPF_MAP_TYPE_RINGBUF${hint}`,
      );
    }
    const size = map.maxEntries;
    if (size <= 0 || (size & (size - 1)) !== 0 || size % PAGE_SIZE !== 0) {
      throw new BpfError('ERR_INVALID_ARGUMENT', `${context}: size ${size} is not a power-of-two multiple of the page size`);
    }
    const lost = options.lostCounter;
    if (lost && (lost.type !== MapType.PERCPU_ARRAY || lost.keySize !== 4 || lost.valueSize !== 8 || lost.maxEntries < 1)) {
      throw new BpfError(
        'ERR_INVALID_ARGUMENT',
        `${context}: lost counter ${lost.name || `fd ${lost.fd}`} must be a BPF_MAP_TYPE_PERCPU_ARRAY with 4-byte keys and ` +
          `one 8-byte value (DEFINE_RINGBUF_LOST_MAP); it is ${mapTypeName(lost.type)} with ${lost.keySize}-byte keys ` +
          `and ${lost.valueSize}-byte values`,
      );
    }
    this.name = name;
    this.size = size;

    // Our own fds: the reader then outlives the BpfMap objects it was made from (a BpfObject
    // closed early), and the number registered in epoll can never be reused under us.
    this.#fd = dup(map.fd, `${context}: duplicating the map fd`);
    let consumerAddress = 0n;
    let lostFd = -1;
    try {
      consumerAddress = mmap(this.#fd, PAGE_SIZE, PROT_READ | PROT_WRITE, 0, `${context}: consumer page`);
      this.#producerLength = PAGE_SIZE + 2 * size;
      this.#producerAddress = mmap(this.#fd, this.#producerLength, PROT_READ, PAGE_SIZE, `${context}: producer page and data`);
      if (lost) lostFd = dup(lost.fd, `${context}: duplicating the lost counter fd`);
    } catch (error) {
      if (consumerAddress !== 0n) munmap(consumerAddress, PAGE_SIZE);
      close(this.#fd);
      throw error;
    }
    this.#consumerAddress = consumerAddress;
    this.#lostFd = lostFd;
    this.#consumerBuffer = view(consumerAddress, PAGE_SIZE);
    this.#producerBuffer = view(this.#producerAddress, this.#producerLength);
    this.#consumerPos = new BigUint64Array(this.#consumerBuffer, 0, 1);
    this.#producerPos = new BigUint64Array(this.#producerBuffer, 0, 1);
    this.#words = new Int32Array(this.#producerBuffer);
    this.#view = new DataView(this.#producerBuffer);
    this.#bytes = new Uint8Array(this.#producerBuffer);

    if (lostFd >= 0) {
      this.#lostValue = Buffer.alloc(8 * possibleCpus());
      this.#lostAttr = Buffer.alloc(MapElemAttr.size);
      this.#lostAttr.writeUInt32LE(lostFd, MapElemAttr.mapFd);
      this.#lostAttr.writeBigUInt64LE(addressOf(this.#lostKey), MapElemAttr.key);
      this.#lostAttr.writeBigUInt64LE(addressOf(this.#lostValue), MapElemAttr.value);
    }
  }

  /** Whether close() has been called. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Whether a started reader (start() or records()) is running. */
  get running(): boolean {
    return this.#waker !== undefined;
  }

  /** Bytes the producer has committed or reserved that this reader has not consumed yet. */
  pendingBytes(): number {
    this.#assertOpen('reading');
    return Number(Atomics.load(this.#producerPos, 0)) - Number(Atomics.load(this.#consumerPos, 0));
  }

  /**
   * Hands every record committed so far to `handler`, in order, and returns how many it handled.
   * Stops early at a record the producer is still writing (it is read next time), after
   * `maxRecords` records, or when the handler returns false. Synchronous: never waits.
   */
  consume(handler: RecordHandler, maxRecords: number = Number.POSITIVE_INFINITY): number {
    this.#assertOpen('consuming');
    if (this.#consuming) {
      throw new BpfError('ERR_BUSY', `consuming ring buffer ${this.name}: consume() called from inside a record handler`);
    }
    this.#consuming = true;
    const size = this.size;
    const words = this.#words;
    const view = this.#view;
    const bytes = this.#bytes;
    const producerPos = this.#producerPos;
    // consumer_pos is read once per call, not cached across calls: one load, and the reader then
    // starts right where any earlier consumer stopped (an agent before its restart on a pinned map,
    // or libbpf in the benchmark). Positions as Numbers are exact up to 2^53 bytes (9 PB) through
    // the ring, more than a reader lives to see; the bitwise ops JS has are 32-bit, hence `%`.
    let consumed = Number(Atomics.load(this.#consumerPos, 0));
    let stored = consumed;
    let records = 0;
    let recordBytes = 0;
    let discarded = 0;
    try {
      // Each pass drains up to one snapshot of producer_pos, then publishes consumer_pos once, so
      // the producer gets its space back per batch, not per record; and a fresh snapshot is taken
      // in case more arrived while we were busy.
      outer: for (;;) {
        const produced = Number(Atomics.load(producerPos, 0));
        if (consumed >= produced) break;
        // The data area starts one page into the producer mapping; `offset` walks the first of
        // the two copies, and a record may run on into the second.
        let offset = PAGE_SIZE + (consumed % size);
        const end = PAGE_SIZE + size;
        while (consumed < produced) {
          // Atomics.load: the header is the word the kernel commits with a release store, so
          // this acquire-load orders our reads of the data after the producer's writes.
          const at = offset;
          const header = Atomics.load(words, at >> 2);
          if ((header & BUSY_BIT) !== 0) break outer;
          const length = header & LENGTH_MASK;
          const total = (length + HEADER_SIZE + 7) & ~7;
          // Advanced before the handler runs: a handler that throws loses its own record rather
          // than seeing it again forever.
          consumed += total;
          offset += total;
          if (offset >= end) offset -= size;
          if ((header & DISCARD_BIT) !== 0) {
            discarded++;
            continue;
          }
          records++;
          recordBytes += length;
          const more = handler(view, at + HEADER_SIZE, length, bytes);
          if (more === false || records >= maxRecords || this.#closed) break outer;
        }
        Atomics.store(this.#consumerPos, 0, BigInt(consumed));
        stored = consumed;
      }
    } finally {
      if (consumed !== stored) Atomics.store(this.#consumerPos, 0, BigInt(consumed));
      this.#records += records;
      this.#recordBytes += recordBytes;
      this.#discarded += discarded;
      this.#consuming = false;
      // close() from inside a handler: the memory had to stay mapped until the loop let go of it.
      if (this.#closed) this.#release();
    }
    return records;
  }

  /**
   * Reads records as they arrive, from event-loop callbacks, until stop() or close(). The handler
   * gets the same zero-copy arguments as in consume(). A started reader keeps the process alive,
   * like a listening socket; see unref().
   */
  start(handler: RecordHandler, options: StartOptions = {}): void {
    const budget = options.budget ?? DEFAULT_BUDGET;
    if (!(budget >= 1)) throw new BpfError('ERR_INVALID_ARGUMENT', `starting ring buffer ${this.name}: budget must be at least 1, got ${budget}`);
    const report = options.onError ?? rethrowLater;
    this.#startWaker(
      options,
      () => {
        try {
          this.consume(handler, budget);
        } catch (error) {
          report(error);
        }
      },
      report,
    );
  }

  /** Stops a started reader; records stay in the ring for a later consume() or start(). */
  stop(): void {
    const waker = this.#waker;
    this.#waker = undefined;
    waker?.close();
    const onStop = this.#onStop;
    this.#onStop = undefined;
    onStop?.();
  }

  /** Lets the process exit while the started reader waits (like socket.unref()). */
  unref(): void {
    this.#waker?.unref();
  }

  ref(): void {
    this.#waker?.ref();
  }

  /**
   * Records as copies, for `for await`. Convenient, not fast: every record is copied out of the
   * ring. Reading pauses while `highWaterMark` records wait for the loop, so a slow loop makes
   * the producer drop (and count) records instead of this process growing without bound.
   * Breaking out of the loop stops the reader.
   */
  async *records(options: RecordsOptions = {}): AsyncGenerator<Buffer, void, undefined> {
    const highWaterMark = options.highWaterMark ?? DEFAULT_HIGH_WATER_MARK;
    const queue: Buffer[] = [];
    let head = 0;
    let paused = false;
    let finished = false;
    let failure: unknown;
    let wake: (() => void) | undefined;
    const signal = (): void => {
      const resolve = wake;
      wake = undefined;
      resolve?.();
    };
    const copy: RecordHandler = (_view, offset, length, bytes) => {
      queue.push(Buffer.from(bytes.subarray(offset, offset + length)));
    };
    const fill = (): void => {
      const room = highWaterMark - (queue.length - head);
      if (room > 0) this.consume(copy, room);
      if (queue.length - head >= highWaterMark && !paused) {
        paused = true;
        this.#waker?.pause();
      }
      signal();
    };
    const fail = (error: unknown): void => {
      failure ??= error;
      signal();
    };
    this.#startWaker(
      options,
      () => {
        try {
          fill();
        } catch (error) {
          fail(error);
        }
      },
      fail,
    );
    this.#onStop = () => {
      finished = true;
      signal();
    };
    try {
      fill();
      for (;;) {
        while (head < queue.length) {
          const record = queue[head];
          queue[head++] = EMPTY;
          if (head > 1024 && head * 2 > queue.length) {
            queue.splice(0, head);
            head = 0;
          }
          if (paused && queue.length - head <= highWaterMark >> 1) {
            paused = false;
            this.#waker?.resume();
          }
          yield record;
        }
        if (failure !== undefined) throw failure;
        if (finished) return;
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
      }
    } finally {
      if (!finished) this.stop();
    }
  }

  [Symbol.asyncIterator](): AsyncGenerator<Buffer, void, undefined> {
    return this.records();
  }

  /**
   * Records the producer could not reserve, summed over CPUs; 0n without a lostCounter. The
   * counter's total, which may predate this reader (a pinned map). After close(), the value read
   * while closing, so final statistics can still be logged.
   */
  lost(): bigint {
    if (!this.#lostAttr || !this.#lostValue) return 0n;
    if (this.#closed) return this.#finalLost;
    bpf(BpfCommand.MAP_LOOKUP_ELEM, this.#lostAttr, `reading the lost counter of ring buffer ${this.name}`);
    let total = 0n;
    for (let offset = 0; offset < this.#lostValue.length; offset += 8) total += this.#lostValue.readBigUInt64LE(offset);
    return total;
  }

  stats(): RingBufferStats {
    return { records: this.#records, bytes: this.#recordBytes, discarded: this.#discarded, lost: this.lost() };
  }

  /** Stops the reader, unmaps the ring and closes its fds. Idempotent. */
  close(): void {
    if (this.#closed) return;
    try {
      this.#finalLost = this.lost();
    } catch {
      // Closing must not fail over statistics; lost() then reports the last value, 0n.
    }
    this.#closed = true;
    this.stop();
    if (!this.#consuming) this.#release();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #release(): void {
    // Detach before unmapping: a DataView a handler kept now throws a TypeError on access instead
    // of reading unmapped memory (SIGSEGV). transfer() moves external memory without copying it.
    // (Same length on purpose: V8 then hands the backing store over as is, never reallocating it.)
    this.#consumerBuffer = this.#consumerBuffer.transfer();
    this.#producerBuffer = this.#producerBuffer.transfer();
    munmap(this.#producerAddress, this.#producerLength);
    munmap(this.#consumerAddress, PAGE_SIZE);
    close(this.#fd);
    close(this.#lostFd);
  }

  #assertOpen(action: string): void {
    if (this.#closed) throw new BpfError('ERR_INVALID_ARGUMENT', `${action} ring buffer ${this.name}: the reader is closed`);
  }

  #startWaker(options: { wakeup?: WakeupMode; drainIntervalMs?: number }, onReadable: () => void, onFailure: (error: unknown) => void): void {
    this.#assertOpen('starting');
    if (this.#waker) throw new BpfError('ERR_BUSY', `starting ring buffer ${this.name}: the reader is already started`);
    const interval = options.drainIntervalMs;
    if (interval !== undefined && !(interval > 0)) {
      throw new BpfError('ERR_INVALID_ARGUMENT', `starting ring buffer ${this.name}: drainIntervalMs must be positive, got ${interval}`);
    }
    const chosen = options.wakeup ?? (typeof koffi.node?.poll === 'function' ? 'poll' : 'thread');
    const waker =
      chosen === 'poll'
        ? pollWaker(this.#fd, this.name, onReadable, onFailure)
        : threadWaker(this.#fd, this.name, onReadable, onFailure);
    this.#waker = interval === undefined ? waker : withDrainTimer(waker, interval, onReadable);
  }

}

const EMPTY = Buffer.alloc(0);

/** `waker`, plus a timer that reads every `intervalMs` while the waker is running. */
function withDrainTimer(waker: Waker, intervalMs: number, onReadable: () => void): Waker {
  let referenced = true;
  let timer: NodeJS.Timeout | undefined;
  const arm = (): void => {
    timer ??= setInterval(onReadable, intervalMs);
    if (!referenced) timer.unref();
  };
  const disarm = (): void => {
    clearInterval(timer);
    timer = undefined;
  };
  arm();
  return {
    pause: () => {
      disarm();
      waker.pause();
    },
    resume: () => {
      waker.resume();
      arm();
    },
    ref: () => {
      referenced = true;
      timer?.ref();
      waker.ref();
    },
    unref: () => {
      referenced = false;
      timer?.unref();
      waker.unref();
    },
    close: () => {
      disarm();
      waker.close();
    },
  };
}

/**
 * Throws `error` as an uncaught exception from a fresh tick. Never throw out of the koffi poll
 * callback itself: it is called from native code through N-API, which parks the exception as
 * pending on the environment and reports it only at some later call into JS, and poll callbacks
 * in between silently do nothing (records went missing that way).
 */
function rethrowLater(error: unknown): void {
  process.nextTick(() => {
    throw error;
  });
}

function mapTypeName(type: number): string {
  const name = Object.entries(MapType).find(([, value]) => value === type)?.[0];
  return name ? `BPF_MAP_TYPE_${name} (${type})` : `map type ${type}`;
}

/**
 * koffi.node.poll(fd, callback) wraps libuv's uv_poll_t: the fd joins the event loop's own epoll
 * set (level-triggered), and the callback runs on the JS thread as `(status, events)`. The shipped
 * index.d.ts declares a one-argument callback; the C++ source (src/koffi/src/uv.cc, OnPoll) passes
 * the libuv status first, so it is declared here as it really is. When uv_poll_init fails (a closed
 * fd, a file epoll cannot watch) koffi aborts the whole process instead of throwing, one more
 * reason the reader only ever polls its own dup of the map fd, valid until close().
 */
interface PollHandle {
  start(callback: (status: number) => void): void;
  stop(): void;
  close(): void;
  ref(): void;
  unref(): void;
}
type PollFunction = (fd: number, callback: (status: number) => void) => PollHandle | null;

function pollWaker(fd: number, name: string, onReadable: () => void, onFailure: (error: unknown) => void): Waker {
  const poll = (koffi.node as unknown as { poll?: PollFunction }).poll;
  if (typeof poll !== 'function') {
    throw new BpfError('ERR_NOT_SUPPORTED', `starting ring buffer ${name}: this koffi has no node.poll; use wakeup: 'thread'`);
  }
  const callback = (status: number): void => {
    // Nothing may escape to koffi (see rethrowLater); onReadable and onFailure normally catch
    // already, this is the backstop.
    try {
      // A negative status is a libuv error (-errno), e.g. the fd went bad.
      if (status < 0) onFailure(errorFromErrno(`waiting on ring buffer ${name}`, -status));
      else onReadable();
    } catch (error) {
      rethrowLater(error);
    }
  };
  let handle: PollHandle | null;
  try {
    handle = poll(fd, callback);
  } catch (error) {
    throw new BpfError('ERR_BPF', `starting ring buffer ${name}: koffi.node.poll failed: ${String(error)}`, { cause: error });
  }
  if (!handle) throw new BpfError('ERR_BPF', `starting ring buffer ${name}: koffi.node.poll returned no handle`);
  const live = handle;
  return {
    pause: () => live.stop(),
    resume: () => live.start(callback),
    ref: () => live.ref(),
    unref: () => live.unref(),
    // uv_poll_stop takes the fd out of epoll at once (the handle's memory is freed later by
    // uv_close), so closing the fd right after this is safe.
    close: () => live.close(),
  };
}

/** Control words shared with the waiter thread. */
const CTL_STOP = 0;
/** 1 while a wakeup is posted and the main thread has not finished reading yet. */
const CTL_PENDING = 1;
/** 1 while paused: the main thread holds the waiter until it wants records again. */
const CTL_HELD = 2;

/**
 * The waiter thread, as CommonJS source (evaluated, so it needs no file of its own). It blocks in
 * epoll_wait on the ring's fd and posts one message per wakeup, then waits until the main thread
 * has read: epoll is level-triggered, so without that handshake it would spin while records wait.
 * The 100 ms timeouts only bound how long a stopped waiter lingers.
 */
const WAITER_SOURCE = `
const { workerData, parentPort } = require('node:worker_threads');
const koffi = require(workerData.koffi);
const libc = koffi.load('libc.so.6');
const epollCreate = libc.func('int epoll_create1(int flags)');
const epollCtl = libc.func('int epoll_ctl(int epfd, int op, int fd, void *event)');
const epollWait = libc.func('int epoll_wait(int epfd, void *events, int maxevents, int timeout)');
const closeFd = libc.func('int close(int fd)');
const ctl = new Int32Array(workerData.control);
function main() {
  const ep = epollCreate(0x80000 /* EPOLL_CLOEXEC */);
  if (ep < 0) return parentPort.postMessage({ errno: koffi.errno(), what: 'epoll_create1' });
  const event = Buffer.alloc(16);
  event.writeUInt32LE(1 /* EPOLLIN */, 0);
  if (epollCtl(ep, 1 /* EPOLL_CTL_ADD */, workerData.fd, event) < 0) {
    parentPort.postMessage({ errno: koffi.errno(), what: 'epoll_ctl' });
    return closeFd(ep);
  }
  const out = Buffer.alloc(16);
  while (Atomics.load(ctl, ${CTL_STOP}) === 0) {
    const n = epollWait(ep, out, 1, 100);
    if (n < 0) {
      const errno = koffi.errno();
      if (errno === 4 /* EINTR */) continue;
      parentPort.postMessage({ errno, what: 'epoll_wait' });
      break;
    }
    if (n === 0) continue;
    Atomics.store(ctl, ${CTL_PENDING}, 1);
    parentPort.postMessage(null);
    while (Atomics.load(ctl, ${CTL_STOP}) === 0 && (Atomics.load(ctl, ${CTL_PENDING}) === 1 || Atomics.load(ctl, ${CTL_HELD}) === 1)) {
      Atomics.wait(ctl, ${CTL_PENDING}, 1, 100);
      if (Atomics.load(ctl, ${CTL_HELD}) === 1) Atomics.wait(ctl, ${CTL_HELD}, 1, 100);
    }
  }
  closeFd(ep);
}
main();
`;

function threadWaker(fd: number, name: string, onReadable: () => void, onFailure: (error: unknown) => void): Waker {
  const control = new Int32Array(new SharedArrayBuffer(3 * Int32Array.BYTES_PER_ELEMENT));
  const worker = new Worker(WAITER_SOURCE, {
    eval: true,
    workerData: { fd, control: control.buffer, koffi: createRequire(import.meta.url).resolve('koffi') },
    name: `ringbuf ${name}`,
  });
  let closed = false;
  const release = (): void => {
    Atomics.store(control, CTL_PENDING, 0);
    Atomics.notify(control, CTL_PENDING);
  };
  worker.on('message', (message: null | { errno: number; what: string }) => {
    if (closed) return;
    if (message !== null) {
      onFailure(errorFromErrno(`waiting on ring buffer ${name} (${message.what} in the waiter thread)`, message.errno));
      return;
    }
    try {
      onReadable();
    } finally {
      release();
    }
  });
  worker.on('error', (error) => {
    if (!closed) onFailure(new BpfError('ERR_BPF', `waiting on ring buffer ${name}: waiter thread failed: ${error.message}`, { cause: error }));
  });
  return {
    pause: () => Atomics.store(control, CTL_HELD, 1),
    resume: () => {
      Atomics.store(control, CTL_HELD, 0);
      Atomics.notify(control, CTL_HELD);
    },
    ref: () => worker.ref(),
    unref: () => worker.unref(),
    close: () => {
      closed = true;
      Atomics.store(control, CTL_STOP, 1);
      Atomics.notify(control, CTL_PENDING);
      Atomics.notify(control, CTL_HELD);
      // The waiter leaves its loop within one epoll timeout and exits on its own; it touches only
      // its epoll fd, never the mapped memory, so close() need not wait for it. Unref'd so a
      // lingering waiter never holds the process open.
      worker.unref();
    },
  };
}
