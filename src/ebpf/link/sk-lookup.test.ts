/**
 * sk_lookup on the real kernel: a program from testdata/sk_lookup.c attached to a fresh network namespace
 * gives connections to a port nobody listens on to a socket the test put in its map.
 * @module
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { statSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { promisify } from 'node:util';
import { BpfObject } from '../object.ts';
import { inNetns } from '../netns.ts';
import { u32, u64 } from '../codec.ts';
import { AttachType, LinkType } from '../internal/constants.ts';
import { netnsPair, objectPath } from '../internal/testutils.ts';
import { attachSkLookup } from './sk-lookup.ts';

const LISTENING_PORT = 41234;
const STEERED_PORT = 41235;
/** steer_config's keys in testdata/sk_lookup.c: the port to steer, and how many it steered. */
const CONFIG_PORT = 0;
const STEERED = 1;

/** Connects to 127.0.0.1:port from inside the namespace: what it read, or the error code. */
async function connectIn(netns: string, port: number): Promise<string> {
  const script = `const s = require('node:net').connect(${port}, '127.0.0.1'); let got = ''; s.on('data', (d) => (got += d)); s.on('end', () => console.log(got)); s.on('error', (e) => console.log(e.code));`;
  const { stdout } = await promisify(execFile)('ip', ['netns', 'exec', netns, process.execPath, '-e', script], { timeout: 5000 });
  return stdout.trim();
}

test('sk_lookup on a network namespace gives connections to a port nobody listens on to the socket in its map, until the link closes', async (t) => {
  const net = netnsPair(t);
  const obj = BpfObject.load(objectPath('sk_lookup'));
  const config = obj.map('steer_config').withCodecs(u32, u32);
  t.after(() => obj.close());
  // Made inside the namespace (a socket belongs to the namespace it was created in), so without an
  // address to look up: that listen() makes its socket at once, on every address of both families.
  const server = inNetns(net.pathB, () => createServer((socket) => socket.end('steered')).listen(LISTENING_PORT));
  t.after(() => server.close());
  const fd = (server as Server & { _handle?: { fd?: number } })._handle?.fd;
  assert.ok(fd !== undefined && fd >= 0, 'the listener has a descriptor');

  assert.equal(await connectIn(net.b, STEERED_PORT), 'ECONNREFUSED', 'nobody listens on the port');
  obj.map('steer_to').withCodecs(u32, u64).update(0, BigInt(fd));
  config.update(CONFIG_PORT, STEERED_PORT);
  const link = attachSkLookup(obj.program('steer_lookup'), { netns: net.pathB });
  t.after(() => link.close());
  const info = link.info();
  assert.deepEqual([info.type, info.attachType, info.netnsIno], [LinkType.NETNS, AttachType.SK_LOOKUP, statSync(net.pathB).ino]);
  assert.equal(await connectIn(net.b, STEERED_PORT), 'steered');
  assert.equal(config.lookup(STEERED), 1);
  assert.equal(await connectIn(net.a, STEERED_PORT), 'ECONNREFUSED', 'another namespace is untouched');

  link.close();
  assert.equal(await connectIn(net.b, STEERED_PORT), 'ECONNREFUSED', 'closing the link detaches the program');
});
