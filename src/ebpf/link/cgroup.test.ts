/**
 * cgroup socket-address hooks on the real kernel: programs from testdata/net.c attached to a
 * cgroup made for the test see (and refuse) the TCP and UDP calls of a child process inside it,
 * and nothing of processes outside it.
 * @module
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createServer, connect, type AddressInfo, type Server } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { BpfObject } from '../object.ts';
import { attachCgroup } from './cgroup.ts';
import type { Link } from './link.ts';
import { u32, u64 } from '../codec.ts';
import { AttachType, LinkType } from '../internal/constants.ts';
import { objectPath, testCgroup } from '../internal/testutils.ts';

const SLOT_CONNECT4 = 3;
const SLOT_SENDMSG4 = 4;
const SLOT_RECVMSG4 = 5;
const SLOT_GETPEERNAME4 = 6;
const SLOTS = { connect4: SLOT_CONNECT4, sendmsg4: SLOT_SENDMSG4, recvmsg4: SLOT_RECVMSG4, getpeername4: SLOT_GETPEERNAME4 };
type Counts = Record<keyof typeof SLOTS, bigint>;

const HOOKS = ['refuse_connect4', 'count_sendmsg4', 'count_recvmsg4', 'count_getpeername4'] as const;

/**
 * Run by a child process: joins the cgroup first (so every socket it makes belongs to it), then
 * connects to both ports, asks for the peer name, and sends a datagram between two UDP sockets.
 */
const CHILD = `
const fs = require('node:fs');
const net = require('node:net');
const dgram = require('node:dgram');
const [procs, refusedPort, allowedPort] = process.argv.slice(1);
fs.writeFileSync(procs, String(process.pid));
const tcp = (port) => new Promise((resolve) => {
  const socket = net.connect({ host: '127.0.0.1', port: Number(port) });
  socket.on('connect', () => {
    const peer = socket.remoteAddress + ':' + socket.remotePort; // getpeername(2)
    socket.end();
    resolve({ ok: true, peer });
  });
  socket.on('error', (error) => resolve({ ok: false, code: error.code }));
});
(async () => {
  const refused = await tcp(refusedPort);
  const allowed = await tcp(allowedPort);
  const receiver = dgram.createSocket('udp4');
  const sender = dgram.createSocket('udp4');
  await new Promise((resolve) => receiver.bind(0, '127.0.0.1', resolve));
  const received = new Promise((resolve) => receiver.once('message', (msg, from) => resolve(msg.toString() + ' from ' + from.address)));
  sender.send('ping', receiver.address().port, '127.0.0.1'); // sendto(2)
  const udp = await received; // recvfrom(2)
  sender.close();
  receiver.close();
  process.stdout.write(JSON.stringify({ refused, allowed, udp }));
})();
`;

interface ChildResult {
  refused: { ok: boolean; code?: string; peer?: string };
  allowed: { ok: boolean; code?: string; peer?: string };
  udp: string;
}

async function runChild(cgroup: string, refusedPort: number, allowedPort: number): Promise<ChildResult> {
  const { stdout } = await promisify(execFile)(
    process.execPath,
    ['-e', CHILD, join(cgroup, 'cgroup.procs'), String(refusedPort), String(allowedPort)],
    { timeout: 20_000 },
  );
  return JSON.parse(stdout) as ChildResult;
}

async function listen(t: TestContext): Promise<{ server: Server; port: number; accepted: () => number }> {
  let accepted = 0;
  const server = createServer((socket) => {
    accepted++;
    socket.on('error', () => {});
    socket.end();
  });
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, port: (server.address() as AddressInfo).port, accepted: () => accepted };
}

/** A TCP connect from this process (outside the cgroup). */
function connectHere(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.on('connect', () => {
      socket.end();
      resolve(true);
    });
    socket.on('error', () => resolve(false));
  });
}

test('cgroup sock_addr hooks count and refuse the calls of a process inside the cgroup only', async (t) => {
  const cgroup = testCgroup(t);
  const obj = BpfObject.load(objectPath('net'));
  t.after(() => obj.close());
  const counters = obj.map('counters').withCodecs(u32, u64);
  const config = obj.map('net_config').withCodecs(u32, u32);
  const counts = (): Counts =>
    Object.fromEntries(Object.entries(SLOTS).map(([name, slot]) => [name, counters.lookup(slot)!])) as Counts;

  const refused = await listen(t);
  const allowed = await listen(t);
  config.update(1, refused.port);

  const links: Link[] = [];
  t.after(() => {
    for (const link of links) link.close();
  });
  for (const name of HOOKS) links.push(attachCgroup(obj.program(name), { cgroup }));
  const info = links[0].info();
  assert.equal(info.type, LinkType.CGROUP);
  assert.equal(info.attachType, AttachType.CGROUP_INET4_CONNECT);
  assert.equal(info.programId, obj.program('refuse_connect4').info().id);
  assert.ok(info.cgroupId !== undefined && info.cgroupId > 0n);
  assert.equal(links[1].info().attachType, AttachType.CGROUP_UDP4_SENDMSG);
  assert.equal(links[2].info().attachType, AttachType.CGROUP_UDP4_RECVMSG);
  assert.equal(links[3].info().attachType, AttachType.CGROUP_INET4_GETPEERNAME);

  // This process is outside the cgroup: the refused port is open to it and nothing is counted.
  assert.equal(await connectHere(refused.port), true, 'the test process connects to the refused port');
  assert.deepEqual(counts(), { connect4: 0n, sendmsg4: 0n, recvmsg4: 0n, getpeername4: 0n });

  const inside = await runChild(cgroup, refused.port, allowed.port);
  assert.deepEqual(inside.refused, { ok: false, code: 'EPERM' }, 'connect4 returning 0 fails connect() with EPERM');
  assert.deepEqual(inside.allowed, { ok: true, peer: `127.0.0.1:${allowed.port}` });
  assert.equal(inside.udp, 'ping from 127.0.0.1');
  const after = counts();
  assert.equal(after.connect4, 2n, 'both connects went through the hook');
  assert.ok(after.sendmsg4 >= 1n, `sendmsg4 counted (${after.sendmsg4})`);
  assert.ok(after.recvmsg4 >= 1n, `recvmsg4 counted (${after.recvmsg4})`);
  assert.ok(after.getpeername4 >= 1n, `getpeername4 counted (${after.getpeername4})`);
  assert.equal(allowed.accepted() >= 1, true);
  assert.equal(refused.accepted(), 1, 'only the test process reached the refused port');

  // Still nothing for this process.
  assert.equal(await connectHere(refused.port), true);
  assert.deepEqual(counts(), after);

  // Closing the links detaches the programs: the child connects everywhere, uncounted.
  for (const link of links) link.close();
  const detached = await runChild(cgroup, refused.port, allowed.port);
  assert.deepEqual(detached.refused, { ok: true, peer: `127.0.0.1:${refused.port}` });
  assert.equal(detached.allowed.ok, true);
  assert.equal(detached.udp, 'ping from 127.0.0.1');
  assert.deepEqual(counts(), after, 'no program runs after detach');
});
