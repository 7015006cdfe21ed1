/**
 * What TC translates besides whole TCP and UDP packets, on the real kernel, for pods outside the
 * socket-LB cgroup:
 * - SCTP through a ClusterIP (this kernel has no SCTP stack: the packets are raw, with a CRC32c
 *   the sender computes): the backend pod receives an INIT addressed to itself with its SCTP
 *   header and checksum untouched (the checksum covers no addresses), and its answer comes back
 *   from the ClusterIP. A service asking SCTP to change port is refused by field.
 * - A UDP datagram larger than the MTU, in fragments, to a ClusterIP and port translated to
 *   another: it reaches the backend whole, and the backend's fragmented answer comes back whole
 *   from the service address.
 * @module
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TestNode, cli, inNs, spawnInNs } from './support/cluster.ts';

const CRC32C = `
import socket, struct, sys, json
T = []
for i in range(256):
    c = i
    for _ in range(8): c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    T.append(c)
def crc32c(b):
    c = 0xFFFFFFFF
    for x in b: c = T[(c ^ x) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF
def packet(sport, dport, tag):
    chunk = struct.pack('!BBHIIHHI', 1, 0, 20, tag, 65535, 1, 1, 1)
    head = struct.pack('!HHII', sport, dport, 0, 0)
    return head[:8] + struct.pack('<I', crc32c(head + chunk)) + chunk
def parse(data):
    ihl = (data[0] & 15) * 4
    src = socket.inet_ntoa(data[12:16]); dst = socket.inet_ntoa(data[16:20])
    s = data[ihl:]
    sport, dport = struct.unpack('!HH', s[:4])
    ok = struct.unpack('<I', s[8:12])[0] == crc32c(s[:8] + bytes(4) + s[12:])
    return {'src': src, 'dst': dst, 'sport': sport, 'dport': dport, 'crcOk': ok, 'tag': struct.unpack('!I', s[16:20])[0] if len(s) >= 20 else None}
`;

/** Receives one SCTP packet, prints it, and answers its sender from its destination port. */
const BACKEND = `${CRC32C}
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)
print('ready', flush=True)
data, _ = r.recvfrom(2048)
p = parse(data)
print(json.dumps(p), flush=True)
r.sendto(packet(p['dport'], p['sport'], 0xbac), (p['src'], 0))
`;

/** Sends an INIT to host:port from sport and prints the answer. */
const CLIENT = `${CRC32C}
host, port, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)
r.settimeout(3)
r.sendto(packet(sport, port, 0x5ca7), (host, 0))
try:
    print(json.dumps(parse(r.recvfrom(2048)[0])))
except socket.timeout:
    print(json.dumps({'error': 'timeout'}))
`;

test('SCTP to a ClusterIP is translated in TC: the backend gets it intact at its address, the answer comes from the service', async (t) => {
  const node = await TestNode.start(t, { nodeName: 'sc1' });
  const web = await node.addPod(t, 'web', { app: 'web' });
  const client = await node.addPod(t, 'client', { app: 'client' });
  const backend = spawnInNs(web.netns, 'python3', ['-c', BACKEND]);
  t.after(() => void backend.kill('SIGKILL'));
  const lines: string[] = [];
  let buffered = '';
  backend.stdout?.on('data', (chunk: Buffer) => {
    buffered += chunk.toString();
    const parts = buffered.split('\n');
    buffered = parts.pop()!;
    lines.push(...parts);
  });
  for (let i = 0; i < 100 && !lines.includes('ready'); i++) await new Promise((r) => setTimeout(r, 50));
  assert.ok(lines.includes('ready'), 'the backend listens');

  const refused = await cli(node, 'service', 'add', 'bad', '--selector', 'app=web', '--port', '9899:9900/SCTP');
  assert.notEqual(refused.code, 0);
  assert.match(refused.stderr, /ports\.0\.targetPort: an SCTP port is never translated to another/);
  const added = await cli(node, 'service', 'add', 'web', '--selector', 'app=web', '--port', '9899/SCTP', '-o', 'json');
  assert.equal(added.code, 0, added.stderr);
  const vip = (JSON.parse(added.stdout) as { clusterIP: string }).clusterIP;

  const answer = JSON.parse(await inNs(client.netns, 'python3', ['-c', CLIENT, vip, '9899', '40123'])) as Record<string, unknown>;
  const seen = JSON.parse(lines.find((l) => l.startsWith('{')) ?? '{}') as Record<string, unknown>;
  assert.deepEqual(seen, { src: client.endpoint.ipv4, dst: web.endpoint.ipv4, sport: 40123, dport: 9899, crcOk: true, tag: 0x5ca7 }, 'the backend got the INIT at its own address, header and checksum intact');
  assert.deepEqual(answer, { src: vip, dst: client.endpoint.ipv4, sport: 9899, dport: 40123, crcOk: true, tag: 0xbac }, 'the answer comes from the ClusterIP');
});

/** Answers each datagram with its length and its name, padded to the datagram's size. */
const BIG_SERVER = `
const [name, port] = process.argv.slice(1);
const u = require('node:dgram').createSocket('udp4');
u.on('message', (m, r) => { const head = Buffer.from(name + ' ' + m.length + ' '); u.send(Buffer.concat([head, Buffer.alloc(m.length - head.length, 0x2e)]), r.port, r.address); });
u.bind(Number(port), '0.0.0.0', () => console.log('ready'));
`;

/** Sends one datagram of `size` bytes and prints the answer's start, its length and where it came from. */
const BIG_CLIENT = `
const [host, port, size] = process.argv.slice(1);
const u = require('node:dgram').createSocket('udp4');
const timer = setTimeout(() => { console.log(JSON.stringify({ error: 'timeout' })); process.exit(0); }, 3000);
u.on('message', (m, r) => { clearTimeout(timer); console.log(JSON.stringify({ head: String(m.subarray(0, 16)).split(' ').slice(0, 2).join(' '), length: m.length, from: r.address + ':' + r.port })); u.close(); });
u.send(Buffer.alloc(Number(size), 0x78), Number(port), host);
`;

test('a fragmented UDP datagram to a ClusterIP reaches its backend whole, and the fragmented answer comes back from the service', async (t) => {
  const node = await TestNode.start(t, { nodeName: 'fr1' });
  const web = await node.addPod(t, 'web', { app: 'web' });
  const client = await node.addPod(t, 'client', { app: 'client' });
  const server = spawnInNs(web.netns, process.execPath, ['-e', BIG_SERVER, 'web', '7053']);
  t.after(() => void server.kill('SIGKILL'));
  await new Promise((resolve) => server.stdout?.once('data', resolve));
  const added = await cli(node, 'service', 'add', 'dns', '--selector', 'app=web', '--port', '53:7053/UDP', '-o', 'json');
  assert.equal(added.code, 0, added.stderr);
  const vip = (JSON.parse(added.stdout) as { clusterIP: string }).clusterIP;

  // The pods' MTU follows the node's device (loopback here: 64 KiB); 1400 on both pods' own
  // interfaces makes the datagrams below leave each of them in fragments.
  for (const pod of [web, client]) await inNs(pod.netns, 'ip', ['link', 'set', 'eth0', 'mtu', '1400']);
  const ask = async (size: number) => JSON.parse(await inNs(client.netns, process.execPath, ['-e', BIG_CLIENT, vip, '53', String(size)])) as Record<string, unknown>;
  assert.deepEqual(await ask(100), { head: 'web 100', length: 100, from: `${vip}:53` }, 'a small datagram, as ever');
  // Over the MTU: sent as three fragments each way.
  for (const size of [4000, 4000]) assert.deepEqual(await ask(size), { head: `web ${size}`, length: size, from: `${vip}:53` }, `a ${size}-byte datagram and its answer, in fragments`);
});
