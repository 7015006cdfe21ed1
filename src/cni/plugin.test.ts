/**
 * Where a pod's labels come from when a container runtime runs the plugin: the network
 * configuration's args.cni.labels (CNI conventions) and the container's CILIATE_LABELS in CNI_ARGS.
 * @module
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CniError } from './errors.ts';
import { parseNetConf, podLabelsFrom, type CniInvocation } from './plugin.ts';

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
