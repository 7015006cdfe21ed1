import { test } from 'node:test';
import assert from 'node:assert/strict';
import { probeFeature } from '../ebpf/index.ts';
import { RuntimeError } from './errors.ts';
import { MISSING_HOOK_REASON, compileTracingPolicy, type PolicyProblem } from './tracing-policy.ts';
import { withPolicyMode } from './policy-mode.ts';

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
    compileTracingPolicy(text);
  } catch (error) {
    assert.ok(RuntimeError.is(error, 'ERR_RUNTIME_POLICY'), String(error));
    return error.details as PolicyProblem[];
  }
  return [];
}

test('a kprobe on a kernel function is refused on a kernel without kprobes, naming the field', () => {
  const problems = problemsOf(FILE_MONITORING);
  if (probeFeature('kprobes').status === 'supported') {
    assert.deepEqual(problems, [{ field: 'spec.kprobes[0].call', reason: '"security_file_permission": kprobes on kernel functions are not supported yet' }]);
    return;
  }
  assert.deepEqual(problems, [{ field: 'spec.kprobes[0].call', reason: `"security_file_permission" ${MISSING_HOOK_REASON}` }]);
});

test('LSM hooks and fentries are refused where the kernel refuses them', () => {
  const lsm = problemsOf('apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: lsm}\nspec:\n  lsmhooks:\n  - hook: file_open\n');
  assert.deepEqual(lsm, [{ field: 'spec.lsmhooks[0]', reason: probeFeature('bpf_lsm').status === 'supported' ? 'LSM hooks are not supported yet' : MISSING_HOOK_REASON }]);
  const fentry = problemsOf('apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: fe}\nspec:\n  fentries:\n  - call: do_unlinkat\n');
  assert.deepEqual(fentry, [{ field: 'spec.fentries[0]', reason: probeFeature('fentry').status === 'supported' ? 'fentries are not supported yet' : MISSING_HOOK_REASON }]);
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

test('syscall kprobes and tracepoints compile to their tracepoint, arguments at their record offsets', () => {
  const { header, hooks } = compileTracingPolicy(`apiVersion: cilium.io/v1alpha1
kind: TracingPolicyNamespaced
metadata: {name: watch, namespace: default}
spec:
  tracepoints:
  - subsystem: sched
    event: sched_process_exec
    args: [{index: 4, type: string}, {index: 5, type: int}]
  kprobes:
  - call: sys_openat
    syscall: true
    args: [{index: 0, type: int}, {index: 1, type: string}]
    selectors:
    - matchArgs: [{index: 1, operator: Prefix, values: ["/etc/"]}]
      matchBinaries: [{operator: In, values: ["/usr/bin/cat"]}]
      matchActions: [{action: Post}]
`);
  assert.deepEqual(header, { kind: 'TracingPolicyNamespaced', name: 'watch', namespace: 'default', mode: 'enforce', enforces: false });
  assert.deepEqual(hooks.map((h) => [h.field, `${h.group}/${h.name}`, h.functionName]), [
    ['spec.kprobes[0]', 'syscalls/sys_enter_openat', '__x64_sys_openat'],
    ['spec.tracepoints[0]', 'sched/sched_process_exec', undefined],
  ]);
  // openat's record: 8 common bytes, __syscall_nr, then each argument in 8 bytes from offset 16.
  assert.deepEqual(hooks[0].args.map((a) => [a.index, a.offset, a.size, a.report]), [[0, 16, 4, 'int_arg'], [1, 24, 8, 'string_arg']]);
  assert.deepEqual(hooks[0].selectors[0].args[0].strings, { kind: 'prefix', values: ['/etc/'] });
  assert.deepEqual(hooks[0].selectors[0].binaries, { kind: 'equal', values: ['/usr/bin/cat'] });
  // sched_process_exec's filename is a __data_loc string, field 4 after the 4 common fields.
  assert.equal(hooks[1].args[0].report, 'string_arg');
  assert.equal(hooks[1].args[0].offset, 8);
});

test('unknown operators, actions, limits and bad selector values are named by field', () => {
  const problems = problemsOf(`apiVersion: cilium.io/v1alpha1
kind: TracingPolicyNamespaced
metadata: {name: bad, namespace: default}
spec:
  containerSelector: {matchLabels: {image: nginx}}
  kprobes:
  - call: sys_openat
    syscall: true
    args: [{index: 1, type: string}, {index: 2, type: file}]
    selectors:
    - matchArgs: [{index: 1, operator: Contains, values: ["x"]}, {index: 3, operator: Equal, values: ["1"]}]
      matchActions: [{action: Sigkill, rateLimit: 1m}]
      matchBinaries: [{operator: Prefix, values: ["/usr/"], followChildren: true}]
    - matchActions: [{action: Override, argError: -1}]
      matchNamespaces: [{namespace: Kube, operator: In, values: [host_ns]}, {namespace: Net, operator: In, values: [abc]}]
    - matchActions: [{action: Post, rateLimit: fast, rateLimitScope: cpu}]
      matchCapabilities: [{type: Effective, operator: In, values: [CAP_NOPE]}]
      matchNamespaceChanges: [{operator: In, values: [Mnt, Kube]}]
      matchCapabilityChanges: [{type: Ambient, operator: In, values: [CAP_SYS_ADMIN]}]
  - call: sys_nosuchcall
`);
  const byField = new Map(problems.map((p) => [p.field, p.reason]));
  const expected: Record<string, RegExp> = {
    'spec.containerSelector.matchLabels.image': /unknown key "image": want name or repo/,
    'spec.kprobes[0].args[1].type': /kernel object/,
    'spec.kprobes[0].selectors[0].matchArgs[0].operator': /"Contains": want one of Equal, NotEqual, Prefix/,
    'spec.kprobes[0].selectors[0].matchArgs[1].index': /no argument with index 3/,
    'spec.kprobes[0].selectors[0].matchActions[0].rateLimit': /only with action Post/,
    'spec.kprobes[0].selectors[0].matchBinaries[0].followChildren': /only with operator In/,
    'spec.kprobes[0].selectors[1].matchActions[0].action': /"Override": needs kprobe override/,
    'spec.kprobes[0].selectors[1].matchNamespaces[0].namespace': /"Kube": want one of Uts, Ipc, Mnt, Pid/,
    'spec.kprobes[0].selectors[1].matchNamespaces[1].values[0]': /"abc": want a namespace inode number or host_ns/,
    'spec.kprobes[0].selectors[2].matchActions[0].rateLimit': /"fast": want a time/,
    'spec.kprobes[0].selectors[2].matchActions[0].rateLimitScope': /"cpu": want thread, process or global/,
    'spec.kprobes[0].selectors[2].matchCapabilities[0].values[0]': /"CAP_NOPE": not a capability/,
    'spec.kprobes[0].selectors[2].matchNamespaceChanges[0].values[1]': /"Kube": want one of/,
    'spec.kprobes[0].selectors[2].matchCapabilityChanges[0].type': /"Ambient": want Effective, Inheritable or Permitted/,
    'spec.kprobes[1].call': /no syscall nosuchcall/,
  };
  assert.deepEqual([...byField.keys()].sort(), Object.keys(expected).sort());
  for (const [field, reason] of Object.entries(expected)) assert.match(byField.get(field) ?? '', reason, field);
  assert.equal(problems.length, Object.keys(expected).length);
  const six = problemsOf(`apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: six}
spec:
  kprobes:
  - call: sys_openat
    args: [{index: 1, type: string}]
    selectors: [{}, {}, {}, {}, {}, {}]
`);
  assert.deepEqual(six, [{ field: 'spec.kprobes[0].selectors', reason: 'at most 5 selectors' }]);
});

test('a containerSelector scopes a policy to containers by name and repo; bad ones are refused whole, by field', () => {
  const policy = (selector: string, kind = 'TracingPolicy') => `apiVersion: cilium.io/v1alpha1
kind: ${kind}
metadata: {name: ctr${kind === 'TracingPolicy' ? '' : ', namespace: default'}}
spec:
  containerSelector: ${selector}
  kprobes:
  - call: sys_openat
    args: [{index: 1, type: string}]
`;
  // Alone it still scopes the policy: to the selected containers of every pod.
  const { scope } = compileTracingPolicy(policy('{matchExpressions: [{key: name, operator: In, values: [app]}, {key: repo, operator: Exists}]}'));
  assert.deepEqual(scope, { namespace: undefined, podSelector: undefined, containerSelector: { matchLabels: {}, matchExpressions: [{ key: 'name', operator: 'In', values: ['app'] }, { key: 'repo', operator: 'Exists', values: [] }] } });
  assert.deepEqual(compileTracingPolicy(policy('{matchLabels: {name: app}}', 'TracingPolicyNamespaced')).scope, { namespace: 'default', podSelector: undefined, containerSelector: { matchLabels: { name: 'app' }, matchExpressions: [] } });
  assert.equal(compileTracingPolicy(policy('null')).scope, undefined);

  const problems = problemsOf(policy(`
    matchLabels: {name: app, image: nginx}
    matchExpressions:
    - {key: namespace, operator: In, values: [x]}
    - {key: name, operator: Contains, values: [x]}
    - {key: repo, operator: In}
    - {key: name, operator: DoesNotExist, values: [x]}
    - {key: name, operator: NotIn, values: [sidecar], extra: 1}`));
  assert.deepEqual(problems, [
    { field: 'spec.containerSelector.matchLabels.image', reason: 'unknown key "image": want name or repo' },
    { field: 'spec.containerSelector.matchExpressions[0].key', reason: 'unknown key "namespace": want name or repo' },
    { field: 'spec.containerSelector.matchExpressions[1].operator', reason: '"Contains": want In, NotIn, Exists or DoesNotExist' },
    { field: 'spec.containerSelector.matchExpressions[2].values', reason: 'In wants values' },
    { field: 'spec.containerSelector.matchExpressions[3].values', reason: 'DoesNotExist takes no values' },
    { field: 'spec.containerSelector.matchExpressions[4].extra', reason: 'unknown field' },
  ]);
  assert.deepEqual(problemsOf(policy('[name]')), [{ field: 'spec.containerSelector', reason: 'want a label selector (matchLabels, matchExpressions)' }]);
});

test("spec.options policy-mode: monitor compiles Sigkill as Post and keeps what it stands for; loading's mode wins; a bad option is refused naming it; tetra's --mode rewrites the option", () => {
  const text = (options: string) => `apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: modes}
spec:
${options}  kprobes:
  - call: sys_openat
    args: [{index: 1, type: string}]
    selectors:
    - matchArgs: [{index: 1, operator: Prefix, values: [/etc/shadow]}]
      matchActions: [{action: Sigkill}]
`;
  const monitored = compileTracingPolicy(text('  options: [{name: policy-mode, value: monitor}]\n'));
  assert.deepEqual([monitored.header.mode, monitored.header.enforces], ['monitor', true]);
  assert.deepEqual([monitored.hooks[0].selectors[0].action, monitored.hooks[0].selectors[0].monitored], ['POST', 'SIGKILL']);
  const enforced = compileTracingPolicy(text('  options: [{name: policy-mode, value: monitor}]\n'), { mode: 'enforce' });
  assert.deepEqual([enforced.header.mode, enforced.hooks[0].selectors[0].action, enforced.hooks[0].selectors[0].monitored], ['enforce', 'SIGKILL', undefined]);
  assert.equal(compileTracingPolicy(text('')).header.mode, 'enforce', 'enforce by default');
  const refused = (options: string) => {
    try {
      compileTracingPolicy(text(options), { mode: 'monitor' });
    } catch (error) {
      return (error as RuntimeError).details;
    }
    return undefined;
  };
  assert.deepEqual(refused('  options: [{name: policy-mode, value: audit}]\n'), [{ field: 'spec.options[0].value', reason: '"audit": want enforce or monitor' }]);
  assert.deepEqual(refused('  options: [{name: disable-kprobe-multi, value: "1"}]\n'), [{ field: 'spec.options[0].name', reason: '"disable-kprobe-multi": not supported yet (policy-mode is)' }]);
  const rewritten = withPolicyMode(text('  options: [{name: policy-mode, value: enforce}]\n'), 'monitor');
  assert.equal(compileTracingPolicy(rewritten).header.mode, 'monitor');
  assert.equal((rewritten.match(/policy-mode/g) ?? []).length, 1, 'one policy-mode, replaced');
});
