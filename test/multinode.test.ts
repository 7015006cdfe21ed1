import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TestNode, Underlay, echo, echoServer, ping } from './support/cluster.ts';
import type { NodeRecord } from '../src/agent/index.ts';

for (const routingMode of ['tunnel', 'native'] as const) {
  test(`two nodes × two pods sharing etcd, ${routingMode} routing: every pod reaches every other over ICMP, TCP and UDP`, async (t) => {
    const underlay = await Underlay.create(t);
    const etcd = await underlay.startEtcd(t);
    const nodes = [
      await TestNode.start(t, { nodeName: 'n1', nodeIp: '192.168.100.1', underlay, etcd, routingMode }),
      await TestNode.start(t, { nodeName: 'n2', nodeIp: '192.168.100.2', underlay, etcd, routingMode }),
    ];
    const pods = [];
    for (const node of nodes) for (const app of ['web', 'db']) pods.push(await node.addPod(t, undefined, { app }));
    const [web1, db1, web2, db2] = pods.map((p) => p.endpoint.identity);
    assert.equal(web1, web2, 'the same labels get the same identity on both nodes (shared through etcd)');
    assert.equal(db1, db2);
    assert.notEqual(web1, db1);
    assert.ok(web1 >= 256 && db1 >= 256, 'cluster-local identities start at 256');
    const cidrs = (await nodes[0].client.get<NodeRecord[]>('/v1/nodes')).map((n) => n.podCidr);
    assert.equal(new Set(cidrs).size, 2, `each node has its own pod CIDR: ${cidrs.join(', ')}`);
    for (const pod of pods) await echoServer(t, pod.netns, 7100);

    // Node 2 learns node 1's pods through the store: their /32s land in its ipcache.
    const deadline = Date.now() + 5000;
    for (;;) {
      const ipcache = await nodes[1].client.get<{ key: { ip: string } }[]>('/v1/bpf/ipcache');
      if (pods.every((p) => ipcache.some((e) => e.key.ip === p.endpoint.ipv4))) break;
      assert.ok(Date.now() < deadline, 'remote endpoints reach the ipcache');
      await new Promise((resolve) => setTimeout(resolve, 100));
    }

    const failures: string[] = [];
    for (const from of pods) {
      for (const to of pods) {
        if (from === to) continue;
        const label = `${from.endpoint.ipv4} → ${to.endpoint.ipv4}`;
        if (!(await ping(from.netns, to.endpoint.ipv4, 1))) failures.push(`${label} ICMP`);
        if (!(await echo(from.netns, 'tcp', to.endpoint.ipv4, 7100))) failures.push(`${label} TCP`);
        if (!(await echo(from.netns, 'udp', to.endpoint.ipv4, 7100))) failures.push(`${label} UDP`);
      }
    }
    assert.deepEqual(failures, []);
  });
}
