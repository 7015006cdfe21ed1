/**
 * An agent on a TLS etcd that demands client certificates (issue 9: a pod reached etcd on the
 * underlay and wrote a policy key): the agent works through a Cilium-style etcd config file, and a
 * pod on its node, which reaches etcd's port through the datapath, cannot write without a certificate.
 * @module
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createTestPki } from '../src/store/etcd-testing.ts';
import { TestNode, Underlay, inNs } from './support/cluster.ts';

const ETCD = '192.168.100.254';

/** A put through etcd's HTTP gateway from inside `netns`, with or without the client certificate. Prints the outcome. */
const PUT = `
const fs = require('node:fs'), https = require('node:https'), net = require('node:net');
const [url, ca, cert, key] = process.argv.slice(1);
const body = JSON.stringify({ key: Buffer.from('/ciliate/policies/from-pod').toString('base64'), value: Buffer.from('{}').toString('base64') });
const options = { method: 'POST', ca: fs.readFileSync(ca), timeout: 3000, ...(cert ? { cert: fs.readFileSync(cert), key: fs.readFileSync(key) } : {}) };
const tcp = net.connect({ host: new URL(url).hostname, port: Number(new URL(url).port), timeout: 3000 });
tcp.on('connect', () => {
  tcp.destroy();
  const req = https.request(url + '/v3/kv/put', options, (res) => { let b = ''; res.on('data', (c) => (b += c)); res.on('end', () => console.log('status ' + res.statusCode + ' ' + b)); });
  req.on('timeout', () => req.destroy(new Error('timeout')));
  req.on('error', (e) => console.log('refused ' + e.message));
  req.end(body);
});
tcp.on('timeout', () => { tcp.destroy(); console.log('unreachable timeout'); });
tcp.on('error', (e) => console.log('unreachable ' + e.message));
`;

test('agent on TLS etcd with client-cert auth: works through --etcd-config; a pod reaches the port but cannot write', async (t) => {
  const pki = await createTestPki(t, [ETCD]);
  const underlay = await Underlay.create(t);
  const [endpoint] = await underlay.startEtcd(t, ETCD, pki);
  assert.equal(endpoint, `https://${ETCD}:2379`);
  const etcdConfig = join(pki.dir, 'etcd.config');
  await writeFile(etcdConfig, `endpoints:\n- ${endpoint}\ntrusted-ca-file: ${pki.caFile}\ncert-file: ${pki.client.certFile}\nkey-file: ${pki.client.keyFile}\n`);

  const node = await TestNode.start(t, { nodeName: 'n1', nodeIp: '192.168.100.1', underlay, etcdConfig });
  const status = await node.client.get<{ store: { kind: string; revision: number } }>('/v1/status');
  assert.equal(status.store.kind, 'etcd');
  assert.ok(status.store.revision > 0, `the agent wrote to etcd (node registration, IPAM): revision ${status.store.revision}`);

  const pod = await node.addPod(t, undefined, { app: 'web' });
  const withoutCert = (await inNs(pod.netns, process.execPath, ['-e', PUT, endpoint, pki.caFile])).trim();
  assert.match(withoutCert, /^refused .*(certificate|alert)/i, 'the pod reaches etcd but its handshake is refused');
  // A stolen client certificate would still work: what guards etcd is who holds the key, not the route.
  const withCert = (await inNs(pod.netns, process.execPath, ['-e', PUT, endpoint, pki.caFile, pki.client.certFile, pki.client.keyFile])).trim();
  assert.match(withCert, /^status 200 /, 'the same request with the client certificate goes through (so the refusal above is the certificate check)');
});
