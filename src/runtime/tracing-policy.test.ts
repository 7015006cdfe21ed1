import { test } from 'node:test';
import assert from 'node:assert/strict';
import { probeFeature } from '../ebpf/index.ts';
import { RuntimeError } from './errors.ts';
import { MISSING_HOOK_REASON, checkTracingPolicy, type PolicyProblem } from './tracing-policy.ts';

// examples/quickstart/file_monitoring.yaml (Tetragon), unchanged.
const FILE_MONITORING = `apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: "file-monitoring"
spec:
  kprobes:
  - call: "security_file_permission"
    syscall: false
    return: true
    args:
    - index: 0
      type: "file"
    - index: 1
      type: "int"
    returnArg:
      index: 0
      type: "int"
    selectors:
    - matchArgs:
      - index: 0
        operator: "Prefix"
        values: ["/etc/shadow"]
`;

function problemsOf(text: string): PolicyProblem[] {
  try {
    checkTracingPolicy(text);
  } catch (error) {
    assert.ok(RuntimeError.is(error, 'ERR_RUNTIME_POLICY'), String(error));
    return error.details as PolicyProblem[];
  }
  return [];
}

test('a kprobe on a kernel function is refused on a kernel without kprobes, naming the field', () => {
  const problems = problemsOf(FILE_MONITORING);
  if (probeFeature('kprobes').status === 'supported') {
    assert.deepEqual(problems, [], 'a kernel with kprobes takes the policy (not loaded yet)');
    return;
  }
  assert.deepEqual(problems, [{ field: 'spec.kprobes[0].call', reason: `"security_file_permission" ${MISSING_HOOK_REASON}` }]);
});

test('LSM hooks and fentries are refused where the kernel refuses them', () => {
  const lsm = problemsOf('apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: lsm}\nspec:\n  lsmhooks:\n  - hook: file_open\n');
  assert.deepEqual(lsm, probeFeature('bpf_lsm').status === 'supported' ? [] : [{ field: 'spec.lsmhooks[0]', reason: MISSING_HOOK_REASON }]);
  const fentry = problemsOf('apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: fe}\nspec:\n  fentries:\n  - call: do_unlinkat\n');
  assert.deepEqual(fentry, probeFeature('fentry').status === 'supported' ? [] : [{ field: 'spec.fentries[0]', reason: MISSING_HOOK_REASON }]);
});

test('every problem of a malformed policy is named by its field, and nothing is taken', () => {
  const problems = problemsOf(`apiVersion: cilium.io/v1
kind: TracingPolicy
metadata: {name: Bad_Name}
spec:
  kprobez: []
  tracepoints:
  - subsystem: sched
    event: no_such_event
  - subsystem: sched
    event: sched_process_exec
    argz: []
`);
  assert.deepEqual(problems.map((p) => p.field), ['apiVersion', 'metadata.name', 'spec.kprobez', 'spec.tracepoints[0]', 'spec.tracepoints[1].argz']);
  assert.match(problems[3].reason, /no tracepoint sched\/no_such_event in this kernel/);
});

test('hooks this kernel has are taken as valid and reported as not loaded yet', () => {
  const { header, unsupported } = checkTracingPolicy(`apiVersion: cilium.io/v1alpha1
kind: TracingPolicyNamespaced
metadata: {name: watch, namespace: default}
spec:
  tracepoints:
  - subsystem: syscalls
    event: sys_enter_openat
  kprobes:
  - call: sys_openat
    syscall: true
`);
  assert.deepEqual(header, { kind: 'TracingPolicyNamespaced', name: 'watch', namespace: 'default' });
  assert.deepEqual(unsupported, ['spec.kprobes[0] (sys_openat): syscall hooks from syscall tracepoints are not loaded yet', 'spec.tracepoints[0] (syscalls/sys_enter_openat): tracepoint hooks are not loaded yet']);
});
