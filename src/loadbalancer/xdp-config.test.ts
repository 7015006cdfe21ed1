/**
 * The standalone load balancer's config: defaults, and every problem named by file and field.
 * The decap program opens IPIP only from the configured balancers (BPF_PROG_TEST_RUN).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ServiceError } from './errors.ts';
import { parseXdpLbConfig } from './xdp-config.ts';
import { loadXdpLb, XdpLbProgram, xdpLbMaps } from './xdp-maps.ts';

const GOOD = `
interface: eth0
source: 10.0.0.1
vips:
  - address: 192.0.2.10
    port: 80
    backends: [{ address: 10.1.0.2 }, { address: 10.1.0.3, healthPort: 8081 }]
`;

test('a config gets its defaults', () => {
  const config = parseXdpLbConfig(GOOD, 'lb.yaml');
  assert.equal(config.xdpMode, 'native');
  assert.equal(config.vips[0].protocol, 'TCP');
  assert.deepEqual(config.healthCheck, { intervalMs: 1000, timeoutMs: 500, fall: 2, rise: 2 });
});

test('every problem of a config is named by file, field and reason', () => {
  const bad = `
interface: eth0
source: 10.0.0.300
vips:
  - address: 192.0.2.10
    port: 0
    protocol: SCTP
    backends: [{ address: 10.1.0.2 }, { address: 10.1.0.2 }]
  - { address: 192.0.2.10, port: 80, protocol: TCP, backends: [], weight: 3 }
`;
  assert.throws(
    () => parseXdpLbConfig(bad, 'lb.yaml'),
    (error: unknown) => {
      assert.ok(error instanceof ServiceError && error.code === 'ERR_SERVICE_INVALID');
      const message = (error as Error).message;
      for (const expected of [
        /^lb\.yaml: source: not an IPv4 address$/m,
        /^lb\.yaml: vips\.0\.port: .*>=1/m,
        /^lb\.yaml: vips\.0\.protocol: /m,
        /^lb\.yaml: vips\.1: .*weight/m,
      ]) assert.match(message, expected);
      return true;
    },
  );
  // Cross-field checks run on a config whose fields are each valid (zod's refinements).
  const twice = GOOD.replace('{ address: 10.1.0.3, healthPort: 8081 }', '{ address: 10.1.0.2 }') + GOOD.slice(GOOD.indexOf('  - address'));
  assert.throws(() => parseXdpLbConfig(twice, 'lb.yaml'), (error: Error) => {
    assert.match(error.message, /^lb\.yaml: vips\.0\.backends\.1\.address: 10\.1\.0\.2 is listed twice$/m);
    assert.match(error.message, /^lb\.yaml: vips\.1: 192\.0\.2\.10:80\/TCP is listed twice$/m);
    return true;
  });
  assert.throws(() => parseXdpLbConfig('vips: [', 'lb.yaml'), { message: /^lb\.yaml: not YAML/ });
  assert.throws(() => parseXdpLbConfig('', 'lb.yaml'), /lb\.yaml: \(top\): /);
});

/** Ethernet + outer IPv4 (proto 4) from `source` + inner IPv4/UDP: 62 bytes. */
function ipipFrame(source: number[]): Buffer {
  const b = Buffer.alloc(62);
  b.writeUInt16BE(0x0800, 12);
  b.writeUInt8(0x45, 14);
  b.writeUInt16BE(48, 16);
  b.writeUInt8(64, 22);
  b.writeUInt8(4, 23);
  Buffer.from(source).copy(b, 26);
  Buffer.from([10, 1, 0, 2]).copy(b, 30);
  b.writeUInt8(0x45, 34);
  b.writeUInt16BE(28, 36);
  b.writeUInt8(64, 42);
  b.writeUInt8(17, 43);
  Buffer.from([10, 9, 9, 9]).copy(b, 46);
  Buffer.from([192, 0, 2, 10]).copy(b, 50);
  return b;
}

test('the backend opens IPIP from its balancers only (anyone else could inject any inner source)', () => {
  using obj = loadXdpLb({ programs: [XdpLbProgram.DECAP] });
  xdpLbMaps(obj).decapSources.update('10.0.0.1', 1);
  const program = obj.program(XdpLbProgram.DECAP);
  const opened = program.testRun({ data: ipipFrame([10, 0, 0, 1]) });
  assert.equal(opened.returnValue, 0);
  assert.equal(opened.data.length, 42, 'the outer header is gone');
  assert.equal(opened.data.readUInt8(23), 17, 'the inner UDP packet follows the Ethernet header');
  assert.deepEqual([...opened.data.subarray(26, 30)], [10, 9, 9, 9]);
  const stranger = program.testRun({ data: ipipFrame([10, 0, 0, 66]) });
  assert.equal(stranger.data.length, 62, 'IPIP from another source is left closed');
  assert.equal(stranger.data.readUInt8(23), 4);
});
