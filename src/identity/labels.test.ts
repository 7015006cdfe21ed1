/**
 * Tests of labels: parsing and formatting, the canonical form, validation errors, the default
 * label filter, pod labels and CIDR label keys.
 * @module
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { IdentityError, InvalidLabelsError } from './errors.ts';
import { LabelFilter } from './label-filter.ts';
import { LABEL_NAMESPACE, Labels, formatLabel, makeLabel, parseLabel, podLabels } from './labels.ts';
import { cidrLabels } from './local.ts';
import { formatPrefix, parsePrefix, prefixLabelKey } from './prefix.ts';

function invalid(fn: () => unknown, label: string, reason: RegExp): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof InvalidLabelsError, `expected InvalidLabelsError, got ${String(error)}`);
    assert.equal(error.code, 'ERR_IDENTITY_INVALID_LABELS');
    assert.equal(error.label, label);
    assert.match(error.reason, reason);
    assert.ok(error.message.includes(JSON.stringify(label)), `message names the label: ${error.message}`);
    return true;
  });
}

test('labels: parse source:key=value, default source k8s, $name, no value', () => {
  assert.deepEqual(parseLabel('k8s:app=web'), { source: 'k8s', key: 'app', value: 'web' });
  assert.deepEqual(parseLabel('app=web'), { source: 'k8s', key: 'app', value: 'web' });
  assert.deepEqual(parseLabel('app=web', { defaultSource: 'unspec' }), { source: 'unspec', key: 'app', value: 'web' });
  assert.deepEqual(parseLabel('container:com.docker.compose.project=shop'), { source: 'container', key: 'com.docker.compose.project', value: 'shop' });
  assert.deepEqual(parseLabel('reserved:host'), { source: 'reserved', key: 'host', value: '' });
  assert.deepEqual(parseLabel('$world'), { source: 'reserved', key: 'world', value: '' });
  assert.deepEqual(parseLabel('any:app=web'), { source: 'any', key: 'app', value: 'web' });
  assert.deepEqual(parseLabel('k8s:app.kubernetes.io/name=web'), { source: 'k8s', key: 'app.kubernetes.io/name', value: 'web' });
  // A ':' after the '=' belongs to the value.
  assert.deepEqual(parseLabel('container:image=nginx:1.27'), { source: 'container', key: 'image', value: 'nginx:1.27' });
  assert.deepEqual(parseLabel('k8s:tier'), { source: 'k8s', key: 'tier', value: '' });
  assert.equal(formatLabel(parseLabel('k8s:tier=')), 'k8s:tier');
  assert.equal(formatLabel(parseLabel('app=web')), 'k8s:app=web');
});

test('labels: canonical form is sorted by key and independent of input order and form', () => {
  const a = Labels.parse(['k8s:io.kubernetes.pod.namespace=default', 'k8s:app=web', 'tier=front']);
  const b = Labels.parse('tier=front;app=web;io.kubernetes.pod.namespace=default');
  const c = Labels.fromRecord({ tier: 'front', [LABEL_NAMESPACE]: 'default', app: 'web' });
  const d = Labels.from([makeLabel('k8s', 'app', 'web'), 'tier=front', 'k8s:io.kubernetes.pod.namespace=default', 'app=web']);
  assert.equal(a.canonical, 'k8s:app=web;k8s:io.kubernetes.pod.namespace=default;k8s:tier=front');
  for (const other of [b, c, d]) assert.equal(other.canonical, a.canonical);
  assert.ok(a.equals(d));
  assert.equal(a.size, 3);
  assert.equal(a.namespace, 'default');
  assert.deepEqual(a.toStrings(), JSON.parse(JSON.stringify(a)));
  assert.equal(Labels.parse(a.canonical).canonical, a.canonical, 'the canonical form parses back');
  assert.equal(Labels.from(a), a);
  assert.equal(Labels.EMPTY.canonical, '');
});

test('labels: invalid labels are refused with the label and the reason', () => {
  invalid(() => parseLabel('foo:bar=baz'), 'foo:bar=baz', /unknown source 'foo'/);
  invalid(() => parseLabel('k8s:app=we b'), 'k8s:app=we b', /value must be empty or 1–63 characters/);
  invalid(() => parseLabel(`k8s:app=${'x'.repeat(64)}`), `k8s:app=${'x'.repeat(64)}`, /value must be empty or 1–63/);
  invalid(() => parseLabel('k8s:-app=web'), 'k8s:-app=web', /key name '-app' must be characters/);
  invalid(() => parseLabel('k8s:Example.COM/app=web'), 'k8s:Example.COM/app=web', /key prefix 'Example.COM' must be a DNS subdomain/);
  invalid(() => parseLabel('k8s:=web'), 'k8s:=web', /key is empty/);
  invalid(() => parseLabel(''), '', /label is empty/);
  invalid(() => parseLabel('reserved:bogus'), 'reserved:bogus', /unknown reserved label 'bogus'/);
  invalid(() => parseLabel('reserved:host=yes'), 'reserved:host=yes', /reserved labels have no value/);
  invalid(() => parseLabel('cidr:10.0.0.0'), 'cidr:10.0.0.0', /'10.0.0.0' is not a CIDR/);
  invalid(() => parseLabel('container:a;b=c'), 'container:a;b=c', /contains ';'/);
  invalid(() => Labels.parse(['k8s:app=web', 'k8s:app=db']), 'k8s:app=db', /key 'app' also appears as "k8s:app=web"/);
  invalid(() => Labels.parse(['k8s:app=web', 'container:app=web']), 'container:app=web', /key 'app' also appears/);
});

test('labels: the default filter drops per-pod labels and keeps the namespace label', () => {
  const labels = podLabels({
    namespace: 'shop',
    serviceAccount: 'web',
    cluster: 'default',
    namespaceLabels: { 'kubernetes.io/metadata.name': 'shop', team: 'a' },
    labels: {
      app: 'web',
      'app.kubernetes.io/name': 'web',
      'pod-template-hash': '5d8f7c9b4',
      'controller-revision-hash': 'web-6b7f',
      'pod-template-generation': '3',
      'statefulset.kubernetes.io/pod-name': 'web-0',
      'apps.kubernetes.io/pod-index': '0',
      'batch.kubernetes.io/controller-uid': 'a1b2',
      'kubernetes.io/hostname': 'n1',
      'k8s.io/cluster-service': 'true',
      'failure-domain.beta.kubernetes.io/zone': 'z',
      'io.kubernetes.container.name': 'web',
      'annotation.foo': 'bar',
      etcd_node: 'e1',
    },
  });
  const { identity, dropped } = LabelFilter.default.apply(labels);
  assert.deepEqual(identity.toStrings(), [
    'k8s:app=web',
    'k8s:app.kubernetes.io/name=web',
    'k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop',
    'k8s:io.cilium.k8s.namespace.labels.team=a',
    'k8s:io.cilium.k8s.policy.cluster=default',
    'k8s:io.cilium.k8s.policy.serviceaccount=web',
    'k8s:io.kubernetes.pod.namespace=shop',
  ]);
  assert.equal(dropped.size, 12);
  assert.ok(LabelFilter.default.accepts(parseLabel('reserved:host')));
  assert.ok(LabelFilter.default.accepts(parseLabel('cidr:10.0.0.0/8')));
  assert.ok(LabelFilter.none.accepts(parseLabel('pod-template-hash=x')));
});

test('labels: user filter rules use Cilium syntax; an inclusive rule turns on allow-list mode', () => {
  const allow = new LabelFilter(['k8s:app', 'k8s:!app-version']);
  assert.deepEqual(allow.apply(Labels.parse(['app=web', 'app-version=3', 'tier=db', `${LABEL_NAMESPACE}=ns`])).identity.toStrings(), [
    'k8s:app=web',
    `k8s:${LABEL_NAMESPACE}=ns`,
  ]);
  const deny = new LabelFilter(['!tier']);
  assert.deepEqual(deny.apply(Labels.parse(['app=web', 'tier=db'])).identity.toStrings(), ['k8s:app=web']);
  const containerOnly = new LabelFilter(['container:!tier']);
  assert.deepEqual(containerOnly.apply(Labels.parse(['k8s:tier=db', 'container:tier=db2'].slice(0, 1))).identity.toStrings(), ['k8s:tier=db']);
  invalid(() => new LabelFilter(['!(']), '!(', /not a valid regular expression/);
});

test('labels: CIDR labels are masked and IPv6 uses the dashed label form', () => {
  assert.equal(formatPrefix(parsePrefix('10.1.2.3/8')), '10.0.0.0/8');
  assert.equal(formatPrefix(parsePrefix('2001:DB8:0:0:1::1/64')), '2001:db8::/64');
  assert.equal(formatPrefix(parsePrefix('::ffff:10.0.0.1/128')), '::ffff:a00:1/128');
  assert.equal(prefixLabelKey(parsePrefix('2001:db8::/32')), '2001-db8--0/32');
  assert.equal(prefixLabelKey(parsePrefix('::1/128')), '0--1/128');
  assert.equal(prefixLabelKey(parsePrefix('fe80::1:2/64')), 'fe80--0/64');
  assert.deepEqual(parseLabel('cidr:2001:db8::/32'), { source: 'cidr', key: '2001-db8--0/32', value: '' });
  assert.deepEqual(parseLabel('cidr:2001-db8--0/32'), { source: 'cidr', key: '2001-db8--0/32', value: '' });
  assert.deepEqual(parseLabel('cidr:10.9.9.9/16'), { source: 'cidr', key: '10.9.0.0/16', value: '' });
  assert.deepEqual(cidrLabels('10.0.0.0/8').toStrings(), ['cidr:10.0.0.0/8', 'reserved:world']);
  assert.deepEqual(cidrLabels('2001:db8::/32', { dualStack: true }).toStrings(), ['cidr:2001-db8--0/32', 'reserved:world-ipv6']);
  assert.deepEqual(cidrLabels('0.0.0.0/0').toStrings(), ['reserved:world']);
  for (const bad of ['10.0.0.0', '10.0.0.0/33', '300.0.0.0/8', '010.0.0.0/8', '1:2:3/64', '::/129', 'x/1']) {
    assert.throws(
      () => parsePrefix(bad),
      (error: unknown) => IdentityError.is(error, 'ERR_IDENTITY_INVALID_CIDR') && error.message.includes(JSON.stringify(bad)),
      bad,
    );
  }
});
