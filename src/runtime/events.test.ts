import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Btf, checkLayout } from '../ebpf/index.ts';
import { runtimeExecEvent, runtimeExitEvent, runtimeForkEvent, runtimePolicyEvent } from './events.ts';
import { rtArgFilter, rtArgSpec, rtCapFilter, rtCgroupKey, rtConfig, rtFollowSet, rtHook, rtHookStats, rtNsFilter, rtPodKey, rtProc, rtRateKey, rtSelector, rtTp, stringKeyLayout } from './policy.ts';

const btf = Btf.fromElf(join(import.meta.dirname, '../../build/bpf/bpf_runtime.o'));

test('runtime event codecs match bpf/runtime.h in size and field offsets', () => {
  for (const codec of [runtimeExecEvent, runtimeForkEvent, runtimeExitEvent]) assert.deepEqual(checkLayout(codec, btf), [], codec.name);
  assert.equal(runtimeExecEvent.size, 128);
  assert.equal(runtimeForkEvent.size, 24);
  assert.equal(runtimeExitEvent.size, 32);
});

test('TracingPolicy codecs match bpf/runtime.h in size and field offsets', () => {
  for (const codec of [runtimePolicyEvent, rtArgSpec, rtArgFilter, rtNsFilter, rtCapFilter, rtSelector, rtHook, rtHookStats, rtTp, rtPodKey, rtCgroupKey, rtProc, rtConfig, rtRateKey, rtFollowSet, stringKeyLayout]) assert.deepEqual(checkLayout(codec, btf), [], codec.name);
  assert.equal(runtimePolicyEvent.size, 80);
});
