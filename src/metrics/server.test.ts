import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { test } from 'node:test';
import { pino } from 'pino';
import { Gauge } from 'prom-client';
import { MetricsError, MetricsServer, Registry } from './index.ts';
import { parsePrometheusText, sampleValue } from './text-format-testing.ts';

const log = pino({ level: 'silent' });

/** A loopback port free a moment ago. */
async function freePort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const { port } = probe.address() as { port: number };
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

test('/metrics serves the registry in the text format, reading collect callbacks on each scrape; a port in use names the setting', async (t) => {
  const registry = new Registry();
  let reads = 0;
  new Gauge({
    name: 'test_reads',
    help: 'scrapes so far',
    registers: [registry],
    collect() {
      this.set(++reads);
    },
  });
  const address = `127.0.0.1:${await freePort()}`;
  const server = await MetricsServer.listen(registry, address, 'prometheusServeAddr', log);
  t.after(() => server.close());

  for (const want of [1, 2]) {
    const response = await fetch(`http://${address}/metrics`);
    assert.equal(response.status, 200);
    assert.match(response.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    assert.equal(sampleValue(parsePrometheusText(await response.text()), 'test_reads'), want, 'read when scraped');
  }
  assert.equal((await fetch(`http://${address}/other`)).status, 404);
  assert.equal((await fetch(`http://${address}/metrics`, { method: 'POST' })).status, 405);

  await assert.rejects(MetricsServer.listen(registry, address, 'prometheusServeAddr', log), (error: unknown) => {
    assert.ok(MetricsError.is(error, 'ERR_METRICS_LISTEN'));
    assert.match((error as Error).message, new RegExp(`^prometheusServeAddr: cannot listen on ${address.replace(/\./g, '\\.')}: EADDRINUSE`));
    return true;
  });
});
