import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ConfigError } from '../config.ts';
import { loadConfig } from './index.ts';

test("the metrics servers default to Cilium's loopback ports and take Cilium's address forms; empty is off", () => {
  const defaults = loadConfig();
  assert.equal(defaults.prometheusServeAddr, 'localhost:9962');
  assert.equal(defaults.hubbleMetricsServer, 'localhost:9965');
  assert.deepEqual(defaults.hubbleMetrics, [], "none by default, as Cilium's --hubble-metrics");
  for (const address of ['', ':9962', '127.0.0.1:19962', '[::1]:9962', 'metrics.node-1.example:80']) {
    assert.equal(loadConfig({ flags: { prometheusServeAddr: address } }).prometheusServeAddr, address);
  }
  const fromEnv = loadConfig({ env: { CILIATE_HUBBLE_METRICS: 'flow:sourceContext=namespace;destinationContext=namespace,drop' } });
  assert.deepEqual(fromEnv.hubbleMetrics, ['flow:sourceContext=namespace;destinationContext=namespace', 'drop']);
});

test('a bad listen address or Hubble metric is a config error naming the source, the field and why', () => {
  const cases: [Parameters<typeof loadConfig>[0], RegExp][] = [
    [{ flags: { prometheusServeAddr: 'localhost' } }, /^flags: field prometheusServeAddr: .*"localhost" has no port/],
    [{ flags: { prometheusServeAddr: '127.0.0.1:99999' } }, /^flags: field prometheusServeAddr: .*port "99999" is not a number from 1 to 65535/],
    [{ flags: { prometheusServeAddr: '300.1.1.1:9962' } }, /^flags: field prometheusServeAddr: .*"300\.1\.1\.1" is not a host name or IP address/],
    [{ env: { CILIATE_HUBBLE_METRICS_SERVER: 'local host:9965' } }, /^environment: field hubbleMetricsServer: .*"local host" is not a host name/],
    [{ flags: { hubbleMetricsServer: '[::1:9965' } }, /^flags: field hubbleMetricsServer: .*not a bracketed IPv6 address/],
    [{ flags: { hubbleMetrics: ['flow', 'kafka'] } }, /^flags: field hubbleMetrics: "kafka": unknown metric "kafka"/],
  ];
  for (const [sources, message] of cases) {
    assert.throws(() => loadConfig(sources), (error: unknown) => ConfigError.is(error, 'ERR_CONFIG') && message.test((error as Error).message), JSON.stringify(sources));
  }
});
