/**
 * Where a pod's labels come from when a container runtime runs the plugin: the network
 * configuration's args.cni.labels (CNI conventions) and the container's CILIATE_LABELS in CNI_ARGS.
 * @module
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CniError } from './errors.ts';
import { parseNetConf, podContainersFrom, podLabelsFrom, podPortsFrom, resultFor, type CniInvocation } from './plugin.ts';

const invocation = (args: Record<string, string>): CniInvocation => ({ command: 'ADD', containerId: 'c1', netns: '/run/netns/x', ifname: 'eth0', args });
const conf = (extra: object) => parseNetConf(JSON.stringify({ cniVersion: '1.0.0', name: 'net', type: 'ciliate', ...extra }));

test('labels from args.cni.labels, overridden per container by CILIATE_LABELS', () => {
  assert.deepEqual(podLabelsFrom(conf({}), invocation({})), {});
  const network = conf({ args: { cni: { labels: [{ key: 'app', value: 'web' }, { key: 'tier', value: 'front' }] } } });
  assert.deepEqual(podLabelsFrom(network, invocation({ K8S_POD_NAME: 'p' })), { app: 'web', tier: 'front' });
  assert.deepEqual(podLabelsFrom(network, invocation({ CILIATE_LABELS: 'tier=back,team=payments' })), { app: 'web', tier: 'back', team: 'payments' });
});

test('malformed labels name the field or the variable', () => {
  assert.throws(
    () => podLabelsFrom(conf({ args: { cni: { labels: [{ key: 'app' }] } } }), invocation({})),
    (e: unknown) => e instanceof CniError && /field args\.cni\.labels\.0\.value/.test(e.message),
  );
  assert.throws(
    () => podLabelsFrom(conf({}), invocation({ CILIATE_LABELS: 'app=web,oops' })),
    (e: unknown) => e instanceof CniError && /CNI_ARGS CILIATE_LABELS: "oops" is not key=value/.test(e.message),
  );
});

test('named ports from CILIATE_PORTS (what a service\'s named targetPort resolves to); a malformed item is named', () => {
  assert.equal(podPortsFrom(invocation({})), undefined);
  assert.deepEqual(podPortsFrom(invocation({ CILIATE_PORTS: 'http=8080/tcp,dns=53/UDP,metrics=9090' })), [
    { name: 'http', port: 8080, protocol: 'TCP' },
    { name: 'dns', port: 53, protocol: 'UDP' },
    { name: 'metrics', port: 9090 },
  ]);
  assert.throws(
    () => podPortsFrom(invocation({ CILIATE_PORTS: 'http=8080,8081' })),
    (e: unknown) => e instanceof CniError && /CNI_ARGS CILIATE_PORTS: "8081" is not name=PORT\[\/PROTOCOL\]/.test(e.message),
  );
});

test('a network configuration that breaks the spec names the field at fault', () => {
  const fails = (json: object, pattern: RegExp) =>
    assert.throws(
      () => parseNetConf(JSON.stringify(json)),
      (e: unknown) => e instanceof CniError && e.cniCode === 7 && pattern.test(e.message),
      JSON.stringify(json),
    );
  fails({ cniVersion: '1.0.0', type: 'ciliate' }, /field name: expected a string, got undefined/);
  fails({ cniVersion: '1.0.0', name: '-x', type: 'ciliate' }, /field name: must start with a letter or digit/);
  fails({ cniVersion: '1.0.0', name: 'n', type: '' }, /field type: must not be empty/);
  fails({ cniVersion: '1.0.0', name: 'n', type: 't', socketPath: 'relative.sock' }, /field socketPath: must be an absolute path/);
  fails({ cniVersion: '1.0.0', name: 'n', type: 't', capabilities: { portMappings: 'yes' } }, /field capabilities\.portMappings: expected a boolean/);
  fails({ cniVersion: '1.0.0', name: 'n', type: 't', args: [] }, /field args: expected an object, got array/);
  assert.throws(() => parseNetConf('[]'), (e: unknown) => e instanceof CniError && /field \(top level\): expected an object/.test(e.message));
  const conf = parseNetConf(JSON.stringify({ cniVersion: '0.4.0', name: 'n', type: 't', socketPath: '/run/a.sock', custom: { kept: true } }));
  assert.deepEqual([conf.socketPath, conf.custom], ['/run/a.sock', { kept: true }], 'known fields typed, unknown ones passed through');
});

test('the ADD result follows the requested cniVersion: 0.3.x names the IP version, later ones do not', () => {
  const endpoint = { hostIfname: 'lxc1', hostMac: '02:00:00:00:00:01', ifname: 'eth0', mac: '02:00:00:00:00:02', netns: '/run/netns/p', ipv4: '10.244.0.7' } as Parameters<typeof resultFor>[1];
  const v031 = resultFor(conf({ cniVersion: '0.3.1' }), endpoint, '10.244.0.1');
  assert.deepEqual(v031, {
    cniVersion: '0.3.1',
    interfaces: [{ name: 'lxc1', mac: '02:00:00:00:00:01' }, { name: 'eth0', mac: '02:00:00:00:00:02', sandbox: '/run/netns/p' }],
    ips: [{ version: '4', address: '10.244.0.7/32', gateway: '10.244.0.1', interface: 1 }],
    routes: [{ dst: '0.0.0.0/0', gw: '10.244.0.1' }],
    dns: {},
  });
  const v100 = resultFor(conf({ cniVersion: '1.0.0' }), endpoint, '10.244.0.1');
  assert.deepEqual([v100.cniVersion, v100.ips], ['1.0.0', [{ address: '10.244.0.7/32', gateway: '10.244.0.1', interface: 1 }]]);
});

test("podman's CNI_ARGS (K8S_POD_NAME alone) name the endpoint's own container; a CRI runtime's (with K8S_POD_NAMESPACE) do not", () => {
  assert.deepEqual(podContainersFrom(invocation({ IgnoreUnknown: '1', K8S_POD_NAME: 'web' })), [{ id: 'c1', name: 'web' }]);
  assert.equal(podContainersFrom(invocation({ K8S_POD_NAME: 'web', K8S_POD_NAMESPACE: 'shop', K8S_POD_INFRA_CONTAINER_ID: 'c1' })), undefined);
  assert.equal(podContainersFrom(invocation({})), undefined);
  assert.equal(podContainersFrom({ ...invocation({ K8S_POD_NAME: 'web' }), containerId: 'not/an/id' }), undefined);
});
