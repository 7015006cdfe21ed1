/**
 * A pod that lies about its address. With two nodes (native routing and VXLAN), a pod gives
 * itself another pod's address, the node's underlay address and a world address, and sends from
 * each: nothing arrives, the sending node reports each as INVALID_SOURCE_IP in the monitor and in
 * its status, while the pod's packets from its own address still get through.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { TestNode, Underlay, inNs, sleep, spawnInNs } from './support/cluster.ts';

/** Prints `<source address>` for every datagram on the port; "ready" once bound. */
const UDP_SINK = `
const u = require('node:dgram').createSocket('udp4');
u.on('message', (_d, rinfo) => console.log(rinfo.address));
u.bind(Number(process.argv[1]), '0.0.0.0', () => console.log('ready'));
`;

/** Sends three datagrams from `source` (an address of the pod's) to `address:port`. */
const UDP_FROM = `
const [source, host, port] = process.argv.slice(1);
const u = require('node:dgram').createSocket('udp4');
u.bind({ address: source }, async () => {
  for (let i = 0; i < 3; i++) await new Promise((r) => u.send('forged?', Number(port), host, r));
  u.close();
});
`;

function udpSink(t: TestContext, netns: string, port: number): Promise<() => string[]> {
  const sink = spawnInNs(netns, process.execPath, ['-e', UDP_SINK, String(port)]);
  t.after(() => void sink.kill('SIGKILL'));
  const seen: string[] = [];
  return new Promise((resolve, reject) => {
    sink.stdout?.on('data', (chunk: Buffer) => {
      for (const line of chunk.toString().trim().split('\n')) {
        if (line === 'ready') resolve(() => [...seen]);
        else if (line) seen.push(line);
      }
    });
    sink.once('exit', (code) => reject(new Error(`UDP sink exited with ${code}`)));
  });
}

for (const routingMode of ['native', 'tunnel'] as const) {
  test(`${routingMode} routing: a pod sending from another pod's, the node's or a world address reaches nobody and is reported as INVALID_SOURCE_IP`, async (t) => {
    const underlay = await Underlay.create(t);
    const etcd = await underlay.startEtcd(t);
    const n1 = await TestNode.start(t, { nodeName: 'n1', nodeIp: '192.168.100.1', underlay, etcd, routingMode });
    const n2 = await TestNode.start(t, { nodeName: 'n2', nodeIp: '192.168.100.2', underlay, etcd, routingMode });
    const attacker = await n1.addPod(t, undefined, { app: 'attacker' });
    const trusted = await n1.addPod(t, undefined, { app: 'trusted' });
    const server = await n2.addPod(t, undefined, { app: 'db' });
    const port = 7300;
    const received = await udpSink(t, server.netns, port);
    const send = (source: string) => inNs(attacker.netns, process.execPath, ['-e', UDP_FROM, source, server.endpoint.ipv4, String(port)]);

    // The path works: the attacker's own address gets through (once n2 knows the pod).
    const deadline = Date.now() + 5000;
    while (!received().includes(attacker.endpoint.ipv4)) {
      assert.ok(Date.now() < deadline, `a datagram from the pod's own address reaches ${server.endpoint.ipv4}`);
      await send(attacker.endpoint.ipv4);
      await sleep(100);
    }

    const forged = [trusted.endpoint.ipv4, '192.168.100.1', '8.8.8.8'];
    for (const source of forged) {
      // As a pod with NET_ADMIN could: the address on its own interface, so the socket may bind it.
      await inNs(attacker.netns, 'ip', ['addr', 'add', `${source}/32`, 'dev', 'eth0']);
      await send(source);
    }
    await sleep(500);
    assert.deepEqual(received().filter((source) => forged.includes(source)), [], 'no forged datagram arrives');

    const drops = await n1.client.get<{ summary: string; dropReason?: string; srcIdentity: number }[]>('/v1/monitor?type=drop&last=1000');
    const invalid = drops.filter((d) => d.dropReason === 'INVALID_SOURCE_IP');
    for (const source of forged) {
      assert.ok(invalid.some((d) => d.summary.startsWith(`${source}:`)), `monitor shows the drop from ${source}: ${JSON.stringify(invalid.map((d) => d.summary))}`);
    }
    assert.ok(invalid.every((d) => d.srcIdentity === attacker.endpoint.identity), 'drops are reported as the sending pod');
    const status = await n1.client.get<{ drops: Record<string, number> }>('/v1/status');
    assert.ok((status.drops.INVALID_SOURCE_IP ?? 0) >= forged.length * 3, `status counts the drops: ${JSON.stringify(status.drops)}`);
  });
}
