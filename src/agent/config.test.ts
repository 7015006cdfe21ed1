import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, envName } from './config.ts';
import { loadConfig } from './modules/index.ts';

function tempFile(t: { after: (fn: () => void) => void }, text: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'ciliate-config-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'agent.yaml');
  writeFileSync(file, text);
  return file;
}

test('defaults < file < environment < flags', (t) => {
  const defaults = loadConfig();
  assert.equal(defaults.clusterCidr, '10.244.0.0/16');
  assert.equal(defaults.routingMode, 'tunnel');
  assert.equal(defaults.masquerade, true);
  const file = tempFile(t, 'nodeName: from-file\nclusterCidr: 10.10.0.0/16\nroutingMode: native\nnodeCidrMaskSize: 26\n');
  const config = loadConfig({
    file,
    env: { [envName('clusterCidr')]: '10.20.0.0/16', CILIATE_MASQUERADE: 'false', CILIATE_NODE_CIDR_MASK_SIZE: '25' },
    flags: { clusterCidr: '10.30.0.0/16' },
  });
  assert.equal(config.nodeName, 'from-file');
  assert.equal(config.routingMode, 'native');
  assert.equal(config.clusterCidr, '10.30.0.0/16');
  assert.equal(config.nodeCidrMaskSize, 25);
  assert.equal(config.masquerade, false);
  assert.equal(envName('nodeCidrMaskSize'), 'CILIATE_NODE_CIDR_MASK_SIZE');
});

test('bad configuration names the source and the field, and never half-applies', (t) => {
  const cases: [Parameters<typeof loadConfig>[0], RegExp][] = [
    [{ file: tempFile(t, 'routingMode: carrier-pigeon\n') }, /agent\.yaml: field routingMode: /],
    [{ file: tempFile(t, 'clusterCidr: [1\n') }, /agent\.yaml: not valid YAML/],
    [{ file: tempFile(t, 'nodeName: a\nbogus: 1\n') }, /agent\.yaml: field \(top level\): .*bogus/],
    [{ file: '/nonexistent/agent.yaml' }, /\/nonexistent\/agent\.yaml: cannot read/],
    [{ env: { CILIATE_CLUSTER_CIDR: '10.0.0.0' } }, /environment: field clusterCidr: must be an IPv4 CIDR/],
    [{ env: { CILIATE_CLUSTER_CIDR: '10.244.1.0/16' } }, /environment: field clusterCidr: must be an IPv4 CIDR .*host bits are set \(did you mean 10\.244\.0\.0\/16\?\)/],
    [{ flags: { clusterCidr: 'fd00::/104' } }, /flags: field clusterCidr: must be an IPv4 CIDR .*not an IPv4 prefix/],
    [{ flags: { nodeIp: '10.0.0.01' } }, /flags: field nodeIp: must be an IPv4 address/],
    [{ flags: { nodeIp: 'fd00::1' } }, /flags: field nodeIp: must be an IPv4 address/],
    [{ env: { CILIATE_MASQUERADE: 'sometimes' } }, /environment: field masquerade/],
    [{ flags: { nodeCidrMaskSize: 40 } }, /flags: field nodeCidrMaskSize/],
    [{ flags: { nodeName: 'Not_A_Label' } }, /flags: field nodeName: must be a DNS label/],
    [{ env: { CILIATE_IDENTITY_GC_INTERVAL: 'often' } }, /environment: field identityGcInterval/],
    [{ flags: { identityGcInterval: 0.01 } }, /flags: field identityGcInterval: must be 0 \(off\) or at least 0\.1 seconds/],
    [{ flags: { identityGcGracePeriod: -1 } }, /flags: field identityGcGracePeriod/],
    [{ env: { CILIATE_MONITOR_AGGREGATION: 'high' } }, /environment: field monitorAggregation/],
    [{ env: { CILIATE_MONITOR_AGGREGATION_FLAGS: 'syn,nope' } }, /environment: field monitorAggregationFlags/],
    [{ flags: { monitorAggregationInterval: 0 } }, /flags: field monitorAggregationInterval/],
    [{ flags: { monitorAggregationInterval: 65536 } }, /flags: field monitorAggregationInterval/],
  ];
  for (const [sources, message] of cases) {
    assert.throws(() => loadConfig(sources), (error: unknown) => error instanceof ConfigError && message.test(error.message), String(message));
  }
});

test('identity garbage collection: every 15 minutes by default, 0 turns it off, from file, environment or flags', (t) => {
  const defaults = loadConfig();
  assert.equal(defaults.identityGcInterval, 900);
  assert.equal(defaults.identityGcGracePeriod, 300);
  assert.equal(envName('identityGcInterval'), 'CILIATE_IDENTITY_GC_INTERVAL');
  const file = tempFile(t, 'identityGcInterval: 60\nidentityGcGracePeriod: 10\n');
  assert.deepEqual(
    (({ identityGcInterval, identityGcGracePeriod }) => ({ identityGcInterval, identityGcGracePeriod }))(
      loadConfig({ file, env: { CILIATE_IDENTITY_GC_GRACE_PERIOD: '0' }, flags: { identityGcInterval: 0.5 } }),
    ),
    { identityGcInterval: 0.5, identityGcGracePeriod: 0 },
  );
  assert.equal(loadConfig({ env: { CILIATE_IDENTITY_GC_INTERVAL: '0' } }).identityGcInterval, 0);
});

test("monitor aggregation: Cilium's defaults (medium, syn,fin,rst, 5 s), from file, environment or flags", (t) => {
  const defaults = loadConfig();
  assert.deepEqual([defaults.monitorAggregation, defaults.monitorAggregationFlags, defaults.monitorAggregationInterval], ['medium', ['syn', 'fin', 'rst'], 5]);
  const config = loadConfig({ file: tempFile(t, 'monitorAggregation: maximum\n'), env: { CILIATE_MONITOR_AGGREGATION_FLAGS: 'syn,psh' }, flags: { monitorAggregationInterval: 30 } });
  assert.deepEqual([config.monitorAggregation, config.monitorAggregationFlags, config.monitorAggregationInterval], ['maximum', ['syn', 'psh'], 30]);
});
