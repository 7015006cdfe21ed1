/**
 * Tests of the ring buffer reader against the real kernel: build/bpf/ringbuf.o (from
 * src/ebpf/testdata/ringbuf.c) writes one 64-byte record per BPF_PROG_TEST_RUN repetition.
 * Needs root and `bash scripts/build-bpf.sh`.
 * @module
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { BpfError } from './errors.ts';
import { BpfMap } from './map.ts';
import { BpfObject, type ConstantValue } from './object.ts';
import { RingBuffer, type RecordHandler, type WakeupMode } from './ringbuf.ts';
import { MapType } from './internal/constants.ts';
import { PAGE_SIZE } from './internal/sys.ts';

const ROOT = join(fileURLToPath(import.meta.url), '..', '..', '..');
const OBJECT = join(ROOT, 'build', 'bpf', 'ringbuf.o');
const PACKET = Buffer.alloc(64);
const MAGIC = 0xc111a7e0;
/** sizeof(struct rb_test_record) plus the 8-byte header: what one record takes in the ring. */
const RECORD_SPACE = 72;

interface Fixture {
  obj: BpfObject;
  ring: RingBuffer;
  produce(repeat: number, program?: string): void;
}

function setup(t: TestContext, ringSize?: number, constants?: Record<string, ConstantValue>): Fixture {
  const obj = BpfObject.load(OBJECT, { maxEntries: ringSize ? { events: ringSize } : {}, constants });
  const ring = new RingBuffer(obj.map('events'), { lostCounter: obj.map('events_lost') });
  t.after(() => {
    ring.close();
    obj.close();
  });
  return {
    obj,
    ring,
    produce: (repeat, program = 'rb_reserve') => void obj.program(program).testRun({ data: PACKET, repeat }),
  };
}

/** Checks a record is rb_test_record number `seq` and returns its seq. */
function checkRecord(view: DataView, offset: number, length: number): bigint {
  assert.equal(length, 64);
  const seq = view.getBigUint64(offset, true);
  assert.equal(view.getUint32(offset + 8, true), MAGIC);
  assert.equal(view.getUint32(offset + 12, true), PACKET.length);
  for (let i = 0; i < 6; i++) assert.equal(view.getBigUint64(offset + 16 + 8 * i, true), seq * 8n + BigInt(i));
  return seq;
}

/** A handler collecting sequence numbers, checking every record's contents. */
function collector(): { seqs: bigint[]; handler: RecordHandler } {
  const seqs: bigint[] = [];
  return { seqs, handler: (view, offset, length) => void seqs.push(checkRecord(view, offset, length)) };
}

function range(from: number, to: number): bigint[] {
  return Array.from({ length: to - from }, (_, i) => BigInt(from + i));
}

/**
 * Runs the producer on a worker thread: `bursts` test runs of `repeat` records, `pauseMs` apart.
 * The worker shares the process's fd table, so the program fd loaded here works there too.
 */
function produceInWorker(fd: number, bursts: number, repeat: number, pauseMs = 0): Promise<void> {
  const source = `
    const { workerData, parentPort } = require('node:worker_threads');
    import(workerData.programUrl).then(({ Program }) => {
      const prog = new Program(workerData.fd, { name: 'producer', section: 'tc', type: 3, expectedAttachType: 0 });
      const sleeper = new Int32Array(new SharedArrayBuffer(4));
      const packet = Buffer.alloc(64);
      for (let i = 0; i < workerData.bursts; i++) {
        prog.testRun({ data: packet, repeat: workerData.repeat });
        if (workerData.pauseMs > 0) Atomics.wait(sleeper, 0, 0, workerData.pauseMs);
      }
      parentPort.postMessage('done');
    });`;
  const programUrl = pathToFileURL(join(ROOT, 'src', 'ebpf', 'program.ts')).href;
  const worker = new Worker(source, { eval: true, workerData: { fd, bursts, repeat, pauseMs, programUrl } });
  return new Promise((resolve, reject) => {
    worker.once('message', () => resolve());
    worker.once('error', reject);
    worker.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`producer exited with ${code}`))));
  });
}

function until(condition: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const check = (): void => {
      if (condition()) resolve();
      else if (performance.now() > deadline) reject(new Error(`timed out waiting for ${what}`));
      else setTimeout(check, 2);
    };
    check();
  });
}

test('delivers every record in order with its contents', (t) => {
  const { ring, produce } = setup(t);
  produce(1000);
  assert.equal(ring.pendingBytes(), 1000 * RECORD_SPACE);
  const { seqs, handler } = collector();
  assert.equal(ring.consume(handler), 1000);
  assert.deepEqual(seqs, range(0, 1000));
  assert.equal(ring.pendingBytes(), 0);
  assert.equal(ring.consume(handler), 0, 'nothing twice');
  assert.deepEqual(ring.stats(), { records: 1000, bytes: 64000, discarded: 0, lost: 0n });
});

test('a full ring counts every record it could not take: records + lost == produced', (t) => {
  const { ring, produce } = setup(t, 4096);
  produce(1000);
  const { seqs, handler } = collector();
  const fits = Math.floor(4096 / RECORD_SPACE);
  assert.equal(ring.consume(handler), fits);
  assert.deepEqual(seqs, range(0, fits), 'the first records are kept, later ones dropped');
  const { records, lost } = ring.stats();
  assert.equal(BigInt(records) + lost, 1000n);
  assert.equal(lost, BigInt(1000 - fits));
  // Consuming gave the space back.
  produce(10);
  assert.equal(ring.consume(handler), 10);
  assert.deepEqual(seqs.slice(fits), range(1000, 1010));
  assert.equal(ring.lost(), BigInt(1000 - fits));
  ring.close();
  assert.equal(ring.lost(), BigInt(1000 - fits), 'read once more while closing');
});

test('records that wrap around the end of the ring arrive whole', (t) => {
  const { ring, produce } = setup(t, 4096);
  const { seqs, handler } = collector();
  let straddling = 0;
  const watch: RecordHandler = (view, offset, length, bytes) => {
    // The data area is mapped twice: a record running past its end continues in the second copy.
    if (offset < PAGE_SIZE + 4096 && offset + length > PAGE_SIZE + 4096) straddling++;
    assert.equal(bytes.buffer, view.buffer);
    handler(view, offset, length, bytes);
  };
  const rounds = 100;
  const perRound = 37; // 37 * 72 = 2664 bytes: fits, and lands the ring's end at changing offsets
  for (let i = 0; i < rounds; i++) {
    produce(perRound);
    assert.equal(ring.consume(watch), perRound);
  }
  assert.deepEqual(seqs, range(0, rounds * perRound));
  assert.ok(rounds * perRound * RECORD_SPACE > 50 * 4096, 'the test went round the ring many times');
  assert.ok(straddling > 10, `records crossed the end (${straddling})`);
  assert.equal(ring.lost(), 0n);
});

test('discarded records are skipped', (t) => {
  const { ring, produce } = setup(t, undefined, { discard_every: 5 });
  produce(100);
  const { seqs, handler } = collector();
  assert.equal(ring.consume(handler), 80);
  assert.deepEqual(
    seqs,
    range(0, 100).filter((n) => n % 5n !== 4n),
  );
  assert.equal(ring.stats().discarded, 20);
});

test('lengths that are not a multiple of 8 are padded and delivered exactly', (t) => {
  const { ring, produce } = setup(t, 4096, { output_size: 13 });
  const lengths = new Set<number>();
  const seqs: bigint[] = [];
  for (let i = 0; i < 50; i++) {
    produce(100, 'rb_output'); // 100 * (8 + 16) bytes: fills most of the ring each time
    ring.consume((view, offset, length) => {
      lengths.add(length);
      seqs.push(view.getBigUint64(offset, true));
      assert.equal(view.getUint32(offset + 8, true), MAGIC);
      assert.equal(view.getUint8(offset + 12), PACKET.length);
    });
  }
  assert.deepEqual([...lengths], [13]);
  assert.deepEqual(seqs, range(0, 5000));
  assert.deepEqual(ring.stats(), { records: 5000, bytes: 65000, discarded: 0, lost: 0n });
});

test('consume stops at maxRecords or when the handler returns false', (t) => {
  const { ring, produce } = setup(t);
  produce(100);
  const { seqs, handler } = collector();
  assert.equal(ring.consume(handler, 10), 10);
  assert.equal(
    ring.consume((view, offset, length, bytes) => {
      handler(view, offset, length, bytes);
      return seqs.length < 15;
    }),
    5,
  );
  assert.equal(ring.consume(handler), 85);
  assert.deepEqual(seqs, range(0, 100));
});

test('a throwing handler loses only its own record', (t) => {
  const { ring, produce } = setup(t);
  produce(10);
  const { seqs, handler } = collector();
  assert.throws(
    () =>
      ring.consume((view, offset, length, bytes) => {
        if (view.getBigUint64(offset, true) === 3n) throw new Error('boom');
        handler(view, offset, length, bytes);
      }),
    /boom/,
  );
  ring.consume(handler);
  assert.deepEqual(seqs, [0n, 1n, 2n, 4n, 5n, 6n, 7n, 8n, 9n]);
  produce(1);
  // Re-entry would deliver the same records twice.
  assert.throws(() => ring.consume(() => void ring.consume(handler)), (e: unknown) => BpfError.is(e, 'ERR_BUSY'));
});

for (const wakeup of ['poll', 'thread'] as const satisfies readonly WakeupMode[]) {
  test(`started reader (${wakeup}) delivers a concurrent producer's records and the event loop keeps turning`, async (t) => {
    // 16 MiB holds all 100,000 records, so none may be lost even if the reader stalls.
    const { obj, ring } = setup(t, 16 << 20);
    const total = 100_000;
    const { seqs, handler } = collector();
    let ticks = 0;
    let ticksWhileDelivering = 0;
    let ticking = true;
    const tick = (): void => {
      ticks++;
      if (seqs.length > 0 && seqs.length < total) ticksWhileDelivering++;
      if (ticking) setImmediate(tick);
    };
    setImmediate(tick);
    const errors: unknown[] = [];
    ring.start(handler, { wakeup, budget: 1000, onError: (error) => errors.push(error) });
    assert.equal(ring.running, true);
    assert.throws(() => ring.start(handler), (e: unknown) => BpfError.is(e, 'ERR_BUSY'));
    await produceInWorker(obj.program('rb_reserve').fd, 50, total / 50, 2);
    await until(() => seqs.length >= total, 10_000, `${total} records (have ${seqs.length})`);
    ticking = false;
    ring.stop();
    assert.equal(ring.running, false);
    assert.deepEqual(errors, []);
    assert.equal(seqs.length, total);
    for (let i = 0; i < total; i++) if (seqs[i] !== BigInt(i)) assert.fail(`record ${i} has seq ${seqs[i]}`);
    assert.equal(ring.lost(), 0n);
    assert.ok(ticksWhileDelivering > 5, `setImmediate ran ${ticksWhileDelivering} times during delivery (${ticks} in all)`);
    // Stopped: records stay in the ring for whoever reads next.
    obj.program('rb_reserve').testRun({ data: PACKET, repeat: 5 });
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(seqs.length, total);
    assert.equal(ring.consume(handler), 5);
  });
}

test('a batched producer wakes the reader only for a full batch; drainIntervalMs reads what waits below it', async (t) => {
  const { ring, produce } = setup(t, undefined, { wakeup_bytes: 100 * RECORD_SPACE });
  const { seqs, handler } = collector();
  ring.start(handler);
  // The loop registers the fd with epoll on its next turn, and registering reports a ring that
  // already holds records: produce only once the reader waits.
  await new Promise((resolve) => setTimeout(resolve, 50));
  produce(10);
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.equal(seqs.length, 0, 'ten records below the batch size woke the reader');
  produce(100);
  await until(() => seqs.length === 110, 2000, `110 records after a full batch (have ${seqs.length})`);
  ring.stop();

  assert.throws(() => ring.start(handler, { drainIntervalMs: 0 }), (e: unknown) => BpfError.is(e, 'ERR_INVALID_ARGUMENT'));
  ring.start(handler, { drainIntervalMs: 20 });
  await new Promise((resolve) => setTimeout(resolve, 50));
  produce(5);
  await until(() => seqs.length === 115, 2000, `115 records through the drain timer (have ${seqs.length})`);
  ring.close();
  assert.deepEqual(seqs, Array.from({ length: 115 }, (_, i) => BigInt(i)));
});

test('a started reader reports handler errors to onError and keeps going', async (t) => {
  const { ring, produce } = setup(t);
  const errors: unknown[] = [];
  let delivered = 0;
  ring.start(
    (view, offset) => {
      delivered++;
      if (view.getBigUint64(offset, true) === 1n) throw new Error('bad record');
    },
    { onError: (error) => errors.push(error) },
  );
  produce(3);
  await until(() => delivered === 3, 2000, '3 records');
  assert.equal(errors.length, 1);
  assert.match(String(errors[0]), /bad record/);
});

test('without onError a handler error is uncaught, and the reader still delivers what follows', async (t) => {
  const { ring, produce } = setup(t);
  // Swap node:test's own listeners out for the duration: this error is the expected outcome.
  const runnerListeners = process.rawListeners('uncaughtException') as ((error: Error) => void)[];
  process.removeAllListeners('uncaughtException');
  const uncaught: Error[] = [];
  process.on('uncaughtException', (error) => uncaught.push(error));
  t.after(() => {
    process.removeAllListeners('uncaughtException');
    for (const listener of runnerListeners) process.on('uncaughtException', listener);
  });
  const { seqs, handler } = collector();
  ring.start((view, offset, length, bytes) => {
    handler(view, offset, length, bytes);
    if (seqs.length === 2) throw new Error('unhandled in handler');
  });
  produce(3);
  await until(() => seqs.length === 3, 2000, 'the first 3 records');
  produce(2); // records after the error: once lost while N-API held the exception pending
  await until(() => seqs.length === 5, 2000, `records after the error (have ${seqs.length})`);
  assert.deepEqual(seqs, range(0, 5));
  assert.deepEqual(
    uncaught.map((e) => e.message),
    ['unhandled in handler'],
  );
});

test('records() yields copies for for-await and stops the reader on break', async (t) => {
  const { obj, ring } = setup(t);
  const producing = produceInWorker(obj.program('rb_reserve').fd, 10, 30, 1);
  const seen: bigint[] = [];
  for await (const record of ring) {
    assert.equal(record.length, 64);
    seen.push(record.readBigUInt64LE(0));
    if (seen.length === 300) break;
  }
  await producing;
  assert.deepEqual(seen, range(0, 300));
  assert.equal(ring.running, false);
});

for (const wakeup of ['poll', 'thread'] as const satisfies readonly WakeupMode[]) {
  test(`records() (${wakeup}) pauses at its high-water mark and resumes as the loop catches up`, async (t) => {
    const { ring, produce } = setup(t);
    produce(500);
    const seen: bigint[] = [];
    for await (const record of ring.records({ highWaterMark: 16, wakeup })) {
      seen.push(record.readBigUInt64LE(0));
      if (seen.length === 200) produce(100); // arrives while the reader may be paused
      if (seen.length === 600) break;
    }
    assert.deepEqual(seen, range(0, 600));
    assert.equal(ring.running, false);
  });
}

test('close() is idempotent, stops the reader, and detaches views', async (t) => {
  const { ring, produce } = setup(t);
  produce(2);
  let kept: DataView | undefined;
  ring.start((view) => {
    kept = view;
  });
  await until(() => kept !== undefined, 2000, 'a record');
  ring.close();
  ring.close();
  assert.equal(ring.closed, true);
  assert.equal(ring.running, false);
  // The memory is unmapped: a view kept past close() throws instead of crashing the process.
  assert.throws(() => kept?.getUint32(0), TypeError);
  assert.throws(() => ring.consume(() => {}), (e: unknown) => BpfError.is(e, 'ERR_INVALID_ARGUMENT') && /closed/.test(String(e)));
  assert.throws(() => ring.start(() => {}), /closed/);
  assert.deepEqual(ring.stats(), { records: 2, bytes: 128, discarded: 0, lost: 0n }, 'final statistics stay readable');
  ring[Symbol.dispose]();
});

test('close() from inside a handler waits for the handler to return', (t) => {
  const { ring, produce } = setup(t);
  produce(10);
  let calls = 0;
  ring.consume(() => {
    calls++;
    ring.close();
  });
  assert.equal(calls, 1);
  assert.equal(ring.closed, true);
});

test('the reader outlives the object it came from, and a new reader resumes where the old one stopped', (t) => {
  const { obj, ring, produce } = setup(t);
  produce(10);
  const { seqs, handler } = collector();
  ring.consume(handler, 4);
  const second = new RingBuffer(obj.map('events'));
  t.after(() => second.close());
  obj.close();
  assert.equal(second.consume(handler), 6);
  assert.deepEqual(seqs, range(0, 10));
});

test('maps that are not ring buffers are rejected clearly', (t) => {
  const hash = BpfMap.create({ type: MapType.HASH, keySize: 4, valueSize: 8, maxEntries: 4, name: 'not_a_ring' });
  const user = BpfMap.create({ type: MapType.USER_RINGBUF, keySize: 0, valueSize: 0, maxEntries: 4096, name: 'user_ring' });
  t.after(() => {
    hash.close();
    user.close();
  });
  assert.throws(
    () => new RingBuffer(hash),
    (e: unknown) =>
      BpfError.is(e, 'ERR_INVALID_ARGUMENT') &&
      e.message === 'mapping ring buffer not_a_ring: map is BPF_MAP_TYPE_HASH (1), not BPF_MAP_TYPE_RINGBUF',
  );
  assert.throws(() => new RingBuffer(user), /user_ring: map is BPF_MAP_TYPE_USER_RINGBUF \(31\).*written from user space/);
  const { obj } = setup(t, 4096);
  assert.throws(
    () => new RingBuffer(obj.map('events'), { lostCounter: obj.map('seq') }),
    (e: unknown) => BpfError.is(e, 'ERR_INVALID_ARGUMENT') && /lost counter seq must be a BPF_MAP_TYPE_PERCPU_ARRAY/.test(e.message),
  );
});
