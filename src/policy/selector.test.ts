/**
 * selectorMatches: Cilium's source-aware keys (`any:` matches every source) and Kubernetes
 * matchExpressions semantics.
 * @module
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { canonicalSelectorKey, selectorMatches, type Selector } from './index.ts';

const sel = (matchLabels: Record<string, string>, matchExpressions: Selector['matchExpressions'] = []): Selector => ({ matchLabels, matchExpressions });

const deathstar = {
  'k8s:org': 'empire',
  'k8s:class': 'deathstar',
  'k8s:io.kubernetes.pod.namespace': 'default',
  'container:version': 'v1',
};

test('selector: empty selector selects everything, including label-less endpoints', () => {
  assert.equal(selectorMatches(sel({}), deathstar), true);
  assert.equal(selectorMatches(sel({}), {}), true);
  assert.equal(selectorMatches(sel({}), { 'reserved:world': '' }), true);
});

test('selector: matchLabels — any: and source-less keys match every source, k8s: only k8s', () => {
  assert.equal(selectorMatches(sel({ 'any:org': 'empire' }), deathstar), true);
  assert.equal(selectorMatches(sel({ org: 'empire' }), deathstar), true);
  assert.equal(selectorMatches(sel({ 'k8s:org': 'empire' }), deathstar), true);
  assert.equal(selectorMatches(sel({ 'container:org': 'empire' }), deathstar), false);
  assert.equal(selectorMatches(sel({ 'any:version': 'v1' }), deathstar), true);
  assert.equal(selectorMatches(sel({ 'k8s:version': 'v1' }), deathstar), false);
  assert.equal(selectorMatches(sel({ 'any:org': 'alliance' }), deathstar), false);
  // all labels must match
  assert.equal(selectorMatches(sel({ 'any:org': 'empire', 'any:class': 'tiefighter' }), deathstar), false);
  assert.equal(selectorMatches(sel({ 'any:org': 'empire', 'any:class': 'deathstar', 'k8s:io.kubernetes.pod.namespace': 'default' }), deathstar), true);
  // empty value is a value: reserved labels
  assert.equal(selectorMatches(sel({ 'reserved:host': '' }), { 'reserved:host': '' }), true);
  assert.equal(selectorMatches(sel({ 'reserved:host': '' }), { 'reserved:world': '' }), false);
  assert.equal(selectorMatches(sel({ $host: '' }), { 'reserved:host': '' }), true);
});

test('selector: matchExpressions In / NotIn / Exists / DoesNotExist', () => {
  const In = (key: string, ...values: string[]) => sel({}, [{ key, operator: 'In', values }]);
  const NotIn = (key: string, ...values: string[]) => sel({}, [{ key, operator: 'NotIn', values }]);
  const Exists = (key: string) => sel({}, [{ key, operator: 'Exists', values: [] }]);
  const DoesNotExist = (key: string) => sel({}, [{ key, operator: 'DoesNotExist', values: [] }]);

  assert.equal(selectorMatches(In('any:class', 'deathstar', 'xwing'), deathstar), true);
  assert.equal(selectorMatches(In('any:class', 'xwing'), deathstar), false);
  assert.equal(selectorMatches(In('any:missing', 'x'), deathstar), false);

  assert.equal(selectorMatches(NotIn('any:class', 'xwing'), deathstar), true);
  assert.equal(selectorMatches(NotIn('any:class', 'deathstar'), deathstar), false);
  assert.equal(selectorMatches(NotIn('any:missing', 'x'), deathstar), true, 'NotIn holds when the key is absent');

  assert.equal(selectorMatches(Exists('k8s:io.kubernetes.pod.namespace'), deathstar), true);
  assert.equal(selectorMatches(Exists('k8s:io.kubernetes.pod.namespace'), { 'reserved:world': '' }), false);
  assert.equal(selectorMatches(Exists('container:org'), deathstar), false);

  assert.equal(selectorMatches(DoesNotExist('any:missing'), deathstar), true);
  assert.equal(selectorMatches(DoesNotExist('any:org'), deathstar), false);
  assert.equal(selectorMatches(DoesNotExist('container:org'), deathstar), true);

  // labels and expressions are ANDed
  const both = sel({ 'any:org': 'empire' }, [{ key: 'any:class', operator: 'NotIn', values: ['deathstar'] }]);
  assert.equal(selectorMatches(both, deathstar), false);
  assert.equal(selectorMatches(both, { ...deathstar, 'k8s:class': 'tiefighter' }), true);
});

test('selector: canonical keys', () => {
  assert.equal(canonicalSelectorKey('app'), 'any:app');
  assert.equal(canonicalSelectorKey('k8s:app'), 'k8s:app');
  assert.equal(canonicalSelectorKey('$host'), 'reserved:host');
  assert.equal(canonicalSelectorKey('app.kubernetes.io/name'), 'any:app.kubernetes.io/name');
});
