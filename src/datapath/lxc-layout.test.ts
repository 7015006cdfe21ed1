/**
 * The TS definitions of the endpoint datapath against bpf_lxc.o's BTF: every struct codec's
 * size and field offsets, and every enum the TS side numbers. Needs `bash scripts/build-bpf.sh`.
 * @module
 */
import { test } from 'node:test';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import assert from 'node:assert/strict';
import { Btf, checkLayout } from '../ebpf/index.ts';
import { DropReason, DropReasonCode } from './drop-reasons.ts';
import { EventFlag, MONITOR_EVENT_TYPE_C_NAMES, MonitorEventType, TracePoint, dropEvent, eventHeader, policyVerdictEvent, traceEvent } from './events.ts';
import { PolicyMatch, PolicyVerdict } from '../policy/policy-map.ts';
import { CtFlag, ctEntry, ctTuple, endpointInfo, endpointKey, ipcacheKey, metricsKey, metricsValue, monitorConfig, proxy4Key, proxy4Value, remoteEndpointInfo } from './maps.ts';
import { LXC_OBJECT_PATH } from './lxc.ts';

const btf = Btf.fromElf(LXC_OBJECT_PATH);

test('map codecs match bpf/lib/maps.h', () => {
  for (const codec of [endpointKey, endpointInfo, ipcacheKey, remoteEndpointInfo, ctTuple, ctEntry, metricsKey, metricsValue, monitorConfig, proxy4Key, proxy4Value]) {
    assert.deepEqual(checkLayout(codec, btf), [], codec.name);
  }
  assert.equal(endpointInfo.size, 24);
  assert.equal(ctTuple.size, 16);
  assert.equal(ctEntry.size, 40);
  assert.equal(metricsKey.size, 4);
  assert.equal(metricsValue.size, 16);
  assert.equal(monitorConfig.size, 4);
});

test('event codecs match bpf/lib/events.h', () => {
  for (const codec of [eventHeader, traceEvent, dropEvent]) assert.deepEqual(checkLayout(codec, btf), [], codec.name);
  assert.equal(eventHeader.size, 40);
  assert.equal(traceEvent.size, dropEvent.size);
});

test('policy-verdict event codec matches bpf/lib/events.h, and the policy enums it carries', () => {
  assert.deepEqual(checkLayout(policyVerdictEvent, btf), [], policyVerdictEvent.name);
  assert.equal(policyVerdictEvent.size, 192);
  assert.deepEqual(Object.fromEntries(btf.enumValues('ciliate_policy_verdict')), {
    CILIATE_POLICY_DENIED_DEFAULT: PolicyVerdict.DENIED_DEFAULT,
    CILIATE_POLICY_ALLOWED: PolicyVerdict.ALLOWED,
    CILIATE_POLICY_DENIED: PolicyVerdict.DENIED,
  });
  const match = btf.enumValues('ciliate_policy_match');
  for (const [name, value] of Object.entries(PolicyMatch)) assert.equal(match.get(`CILIATE_POLICY_MATCH_${name}`), value, name);
});

test('DropReason numbers are the C enum ciliate_drop_reason', () => {
  const c = btf.enumValues('ciliate_drop_reason');
  assert.deepEqual(Object.fromEntries(c), { ...DropReasonCode });
  assert.deepEqual(
    [...c.values()].sort((a, b) => a - b),
    Object.keys(DropReason).map(Number).sort((a, b) => a - b),
  );
  assert.equal(DropReason[133], 'POLICY_DENIED');
  assert.equal(DropReason[134], 'INVALID_PACKET_DROPPED');
});

test('trace points and monitor event types are the C enums', () => {
  assert.deepEqual(Object.fromEntries(btf.enumValues('ciliate_trace_point')), { ...TracePoint });
  const types = btf.enumValues('ciliate_event_type');
  assert.equal(types.size, Object.keys(MonitorEventType).length);
  for (const [key, cName] of Object.entries(MONITOR_EVENT_TYPE_C_NAMES)) {
    assert.equal(types.get(cName), MonitorEventType[key as keyof typeof MonitorEventType], cName);
  }
});

/** `#define PREFIX_NAME 0x..` constants of a bpf/lib header, by NAME: flag bits carry no BTF. */
function defines(header: string, prefix: string): Record<string, number> {
  const text = readFileSync(join(import.meta.dirname, '..', '..', 'bpf', 'lib', header), 'utf8');
  const out: Record<string, number> = {};
  for (const m of text.matchAll(new RegExp(`^#define ${prefix}(\\w+)\\s+(0x[0-9a-fA-F]+|\\d+)\\b`, 'gm'))) out[m[1]] = Number(m[2]);
  return out;
}

test('event and conntrack flag bits are the C #defines, bit for bit', () => {
  assert.deepEqual(defines('events.h', 'CILIATE_EVENT_F_'), { ...EventFlag });
  assert.deepEqual(defines('maps.h', 'CT_F_'), { ...CtFlag });
});
