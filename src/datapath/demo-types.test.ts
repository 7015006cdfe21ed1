import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Btf, checkLayout } from '../ebpf/index.ts';
import { demoCounter, demoEvent } from './demo-types.ts';

const btf = Btf.fromElf(join(import.meta.dirname, '../../build/bpf/demo.o'));

test('demo_event codec matches bpf/demo.h in size and field offsets', () => {
  assert.deepEqual(checkLayout(demoEvent, btf), []);
  assert.equal(demoEvent.size, 32);
});

test('demo_counter codec matches bpf/demo.h', () => {
  assert.deepEqual(checkLayout(demoCounter, btf), []);
});
