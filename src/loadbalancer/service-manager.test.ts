/**
 * Services in a real (in-memory) state store: definitions validated whole with the bad field
 * named, ClusterIPs and node ports allocated and never shared, nothing written by a refused
 * create, and each service's frontends following the pods its selector picks.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { parseRequest, RequestError } from '../agent/api-errors.ts';
import { followPrefix } from '../agent/follow.ts';
import { Addr, Prefix } from '../net/index.ts';
import { MemoryStateStore } from '../store/index.ts';
import { ServiceError } from './errors.ts';
import { SERVICES_PREFIX, SERVICE_SPECS_PREFIX, ServiceManager } from './service-manager.ts';
import { serviceRequestSchema, type Service } from './service.ts';

const limits = { serviceCidr: '10.96.0.0/16', nodePortRange: { min: 30000, max: 32767 }, clusterCidr: '10.244.0.0/16' };
const schema = serviceRequestSchema(limits);
const parse = (body: unknown) => parseRequest(schema, body, 'service');

async function setup(t: TestContext) {
  const store = new MemoryStateStore();
  const services = new ServiceManager({ store, limits, log: pino({ level: 'silent' }) });
  const abort = new AbortController();
  const follow = await followPrefix<Service>(store, SERVICE_SPECS_PREFIX, { signal: abort.signal, onEnd: () => undefined, apply: (e) => services.applyServiceEvent(e) });
  services.listed(follow.revision);
  t.after(async () => {
    abort.abort();
    await follow.loop;
    await store.close();
  });
  const create = async (body: unknown) => {
    const result = await services.create(parse(body));
    await services.synced(result.revision);
    return result.service;
  };
  return { store, services, create };
}

function rejects(body: unknown, field: RegExp): void {
  assert.throws(
    () => parse(body),
    (error: unknown) => RequestError.is(error, 'ERR_BAD_REQUEST') && field.test((error as Error).message),
    `${JSON.stringify(body)} must be refused naming ${field}`,
  );
}

test('bad service definitions are refused with the field and the reason', () => {
  const ok = { name: 'web', ports: [{ port: 80 }] };
  parse(ok);
  rejects({ ...ok, ports: [{ port: 70000 }] }, /field ports\.0\.port: must be 1-65535/);
  rejects({ ...ok, ports: [{ port: 0 }] }, /field ports\.0\.port: must be 1-65535/);
  rejects({ ...ok, ports: [{ port: 80, targetPort: 65536 }] }, /field ports\.0\.targetPort: must be 1-65535/);
  rejects({ ...ok, ports: [{ port: 80, protocol: 'ICMP' }] }, /field ports\.0\.protocol: must be one of TCP, UDP, SCTP/);
  // SCTP keeps its port (its CRC32c covers it): translated to another, at a node port or north-south it would be dropped.
  parse({ ...ok, ports: [{ port: 9899, protocol: 'SCTP', targetPort: 9899 }] });
  rejects({ ...ok, ports: [{ port: 9899, protocol: 'SCTP', targetPort: 9900 }] }, /field ports\.0\.targetPort: an SCTP port is never translated to another .*targetPort must be 9899/);
  rejects({ ...ok, selector: { app: 'web' }, ports: [{ port: 9899, protocol: 'SCTP', targetPort: 'sctp' }] }, /field ports\.0\.targetPort: an SCTP port is never translated/);
  rejects({ ...ok, type: 'NodePort', ports: [{ port: 9899, protocol: 'SCTP' }] }, /field ports\.0\.protocol: SCTP only on ClusterIP services without externalIPs/);
  rejects({ ...ok, externalIPs: ['198.51.100.9'], ports: [{ port: 9899, protocol: 'SCTP' }] }, /field ports\.0\.protocol: SCTP only on ClusterIP services/);
  rejects({ ...ok, selector: { 'bad key!': 'x' } }, /field selector\.bad key!: label key "bad key!"/);
  rejects({ ...ok, selector: { app: 'not a value' } }, /field selector\.app: label value "not a value"/);
  rejects({ ...ok, selector: 'app=web' }, /field selector: must be an object of labels/);
  rejects({ ...ok, clusterIP: '10.97.0.1' }, /field clusterIP: must be inside the service CIDR 10\.96\.0\.0\/16/);
  rejects({ ...ok, clusterIP: '10.96.0.0' }, /field clusterIP: must not be the first or last address/);
  rejects({ ...ok, clusterIP: 'ten' }, /field clusterIP: must be an IPv4 address/);
  rejects({ ...ok, name: 'Web' }, /field name: must be a DNS label/);
  rejects({ ...ok, type: 'ExternalName' }, /field type: must be one of ClusterIP, NodePort, LoadBalancer/);
  rejects({ ...ok, ports: [] }, /field ports: a service needs at least one port/);
  rejects({ ...ok, ports: [{ name: 'a', port: 80 }, { name: 'b', port: 80 }] }, /field ports\.1\.port: 80\/TCP is also port 0/);
  rejects({ ...ok, ports: [{ name: 'a', port: 80 }, { port: 81 }] }, /field ports\.1\.name: every port needs a name/);
  rejects({ ...ok, ports: [{ port: 80, nodePort: 30080 }] }, /field ports\.0\.nodePort: only NodePort and LoadBalancer/);
  rejects({ ...ok, type: 'NodePort', ports: [{ port: 80, nodePort: 80 }] }, /field ports\.0\.nodePort: must be in the node port range 30000-32767/);
  rejects({ ...ok, selector: { app: 'web' }, backends: [{ ip: '10.244.0.9' }] }, /field backends: a service selects its backends by selector or lists them, not both/);
  rejects({ ...ok, extra: true }, /Unrecognized key/);
  // An external or LoadBalancer IP would capture what every process sends there: never a pod's,
  // a ClusterIP's, loopback or link-local.
  rejects({ ...ok, externalIPs: ['10.244.1.5'] }, /field externalIPs\.0: 10\.244\.1\.5 is in the cluster CIDR 10\.244\.0\.0\/16/);
  rejects({ ...ok, externalIPs: ['198.51.100.1', '10.96.0.1'] }, /field externalIPs\.1: 10\.96\.0\.1 is in the service CIDR/);
  rejects({ ...ok, externalIPs: ['127.0.0.1'] }, /field externalIPs\.0: 127\.0\.0\.1 is in 127\.0\.0\.0\/8/);
  rejects({ ...ok, type: 'LoadBalancer', loadBalancerIPs: ['169.254.169.254'] }, /field loadBalancerIPs\.0: 169\.254\.169\.254 is in 169\.254\.0\.0\/16/);
  parse({ ...ok, externalIPs: ['198.51.100.1'] });
  rejects({ ...ok, sessionAffinity: 'Sticky' }, /field sessionAffinity: must be None or ClientIP/);
  rejects({ ...ok, sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 0 } } }, /field sessionAffinityConfig\.clientIP\.timeoutSeconds: must be 1-86400/);
  rejects({ ...ok, sessionAffinityConfig: { clientIP: { timeoutSeconds: 60 } } }, /field sessionAffinityConfig: only with sessionAffinity ClientIP/);
  // Two ports of one number but different protocols are two ports (DNS: 53/UDP and 53/TCP).
  parse({ ...ok, ports: [{ name: 'dns', port: 53, protocol: 'UDP' }, { name: 'dns-tcp', port: 53, protocol: 'TCP' }] });
});

test('a ClusterIP is allocated inside the service CIDR and never given twice', async (t) => {
  const { services, create } = await setup(t);
  const cidr = Prefix.parse(limits.serviceCidr);
  const seen = new Set<string>();
  for (let i = 0; i < 20; i++) {
    const service = await create({ name: `s${i}`, ports: [{ port: 80 }] });
    assert.ok(cidr.contains(Addr.parse(service.clusterIP)), `${service.clusterIP} is in ${cidr}`);
    assert.ok(!seen.has(service.clusterIP), `${service.clusterIP} given twice`);
    seen.add(service.clusterIP);
  }
  assert.equal(services.list().length, 20);
});

test('a duplicate ClusterIP, name or node port is refused and nothing of it is written', async (t) => {
  const { store, services, create } = await setup(t);
  const first = await create({ name: 'web', type: 'NodePort', clusterIP: '10.96.0.10', ports: [{ port: 80, targetPort: 8080, nodePort: 30080 }] });
  assert.equal(first.clusterIP, '10.96.0.10');
  assert.deepEqual(first.ports, [{ protocol: 'TCP', port: 80, targetPort: 8080, nodePort: 30080 }]);
  const before = await store.list(SERVICES_PREFIX);

  const refused = async (body: unknown, code: string, message: RegExp) => {
    await assert.rejects(services.create(parse(body)), (error: unknown) => ServiceError.is(error, code as never) && message.test((error as Error).message));
    const after = await store.list(SERVICES_PREFIX);
    assert.deepEqual(after.entries, before.entries, `a refused create (${code}) wrote nothing`);
  };
  await refused({ name: 'other', clusterIP: '10.96.0.10', ports: [{ port: 80 }] }, 'ERR_CLUSTER_IP_IN_USE', /field clusterIP: 10\.96\.0\.10 belongs to service default\/web/);
  await refused({ name: 'web', ports: [{ port: 81 }] }, 'ERR_SERVICE_EXISTS', /default\/web: it exists already/);
  await refused({ name: 'np', type: 'NodePort', ports: [{ port: 80, nodePort: 30080 }] }, 'ERR_NODE_PORT_IN_USE', /ports\.0\.nodePort: 30080\/TCP belongs to service default\/web/);

  // The same name in another namespace is another service; a UDP node port of the same number is free.
  const udp = await create({ name: 'web', namespace: 'prod', type: 'NodePort', ports: [{ port: 53, protocol: 'UDP', nodePort: 30080 }] });
  assert.equal(udp.ports[0].nodePort, 30080);
  const allocated = await create({ name: 'lb', type: 'LoadBalancer', ports: [{ port: 443 }], loadBalancerIPs: ['203.0.113.7'] });
  assert.ok(allocated.ports[0].nodePort! >= 30000 && allocated.ports[0].nodePort! <= 32767, 'a LoadBalancer service gets a node port');
});

test('ClientIP session affinity is stored with its timeout (Kubernetes\' 3 h by default) and carried by every frontend', async (t) => {
  const { services, create } = await setup(t);
  const sticky = await create({ name: 'sticky', sessionAffinity: 'ClientIP', externalIPs: ['198.51.100.9'], ports: [{ port: 80 }] });
  assert.deepEqual(sticky.sessionAffinity, { timeoutSeconds: 10800 });
  const short = await create({ name: 'short', sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 30 } }, ports: [{ port: 80 }] });
  assert.deepEqual(short.sessionAffinity, { timeoutSeconds: 30 });
  const plain = await create({ name: 'plain', ports: [{ port: 80 }] });
  assert.equal(plain.sessionAffinity, undefined);
  assert.deepEqual(services.frontendsOf('default/sticky').map((f) => f.affinityTimeout), [10800, 10800]);
  assert.deepEqual(services.frontendsOf('default/plain').map((f) => f.affinityTimeout), [undefined]);
});

test('deleting a service frees its ClusterIP and node ports', async (t) => {
  const { store, services, create } = await setup(t);
  await create({ name: 'web', type: 'NodePort', clusterIP: '10.96.0.10', ports: [{ port: 80, nodePort: 30080 }] });
  const { revision } = await services.delete('default', 'web');
  await services.synced(revision);
  assert.deepEqual((await store.list(SERVICES_PREFIX)).entries, []);
  assert.deepEqual(services.list(), []);
  assert.equal(services.frontends.size, 0);
  await assert.rejects(services.delete('default', 'web'), (error: unknown) => ServiceError.is(error, 'ERR_SERVICE_NOT_FOUND'));
  const again = await create({ name: 'again', type: 'NodePort', clusterIP: '10.96.0.10', ports: [{ port: 80, nodePort: 30080 }] });
  assert.equal(again.clusterIP, '10.96.0.10');
});

test('frontends follow the pods a selector picks in the service\'s namespace, on every node', async (t) => {
  const { services, create } = await setup(t);
  const web = await create({ name: 'web', selector: { app: 'web' }, externalIPs: ['198.51.100.4'], ports: [{ name: 'http', port: 80, targetPort: 8080 }, { name: 'dns', port: 53, protocol: 'UDP' }] });
  const backendsOf = (key: string) => services.frontends.get(key)?.backends.map((b) => `${b.ip}:${b.port}/${b.protocol}`);
  assert.deepEqual(backendsOf(`${web.clusterIP}:80/TCP`), [], 'no pods yet: a frontend without backends');

  services.upsertPod({ key: 'endpoints/n1/a/eth0', ipv4: '10.244.0.5', namespace: 'default', labels: { app: 'web' } });
  services.upsertPod({ key: 'endpoints/n2/b/eth0', ipv4: '10.244.1.5', namespace: 'default', labels: { app: 'web', tier: 'x' } });
  services.upsertPod({ key: 'endpoints/n2/c/eth0', ipv4: '10.244.1.6', namespace: 'prod', labels: { app: 'web' } });
  services.upsertPod({ key: 'endpoints/n1/d/eth0', ipv4: '10.244.0.6', namespace: 'default', labels: { app: 'db' } });
  assert.deepEqual(backendsOf(`${web.clusterIP}:80/TCP`), ['10.244.0.5:8080/TCP', '10.244.1.5:8080/TCP']);
  assert.deepEqual(backendsOf(`${web.clusterIP}:53/UDP`), ['10.244.0.5:53/UDP', '10.244.1.5:53/UDP']);
  assert.deepEqual(backendsOf('198.51.100.4:80/TCP'), ['10.244.0.5:8080/TCP', '10.244.1.5:8080/TCP'], 'external IPs balance the same backends');

  // A relabelled pod leaves; a deleted one too; only this service's frontends change.
  const other = await create({ name: 'fixed', backends: [{ ip: '10.244.9.9' }], ports: [{ port: 81 }] });
  const otherRevision = services.frontends.revisionOf(`${other.clusterIP}:81/TCP`);
  services.upsertPod({ key: 'endpoints/n1/a/eth0', ipv4: '10.244.0.5', namespace: 'default', labels: { app: 'other' } });
  assert.deepEqual(backendsOf(`${web.clusterIP}:80/TCP`), ['10.244.1.5:8080/TCP']);
  services.deletePod('endpoints/n2/b/eth0');
  assert.deepEqual(backendsOf(`${web.clusterIP}:80/TCP`), []);
  assert.deepEqual(backendsOf(`${other.clusterIP}:81/TCP`), ['10.244.9.9:81/TCP'], 'explicit backends');
  assert.equal(services.frontends.revisionOf(`${other.clusterIP}:81/TCP`), otherRevision, 'pod changes did not rewrite another service\'s frontend');
});

test('a named target port resolves per pod from its named ports; a pod without it is no backend of that port, listed as unresolved', async (t) => {
  const { services, create } = await setup(t);
  const web = await create({ name: 'web', selector: { app: 'web' }, ports: [{ name: 'http', port: 80, targetPort: 'http' }, { name: 'dns', port: 53, protocol: 'UDP', targetPort: 'dns' }, { name: 'raw', port: 90, targetPort: 9000 }] });
  assert.deepEqual(web.ports.map((p) => p.targetPort), ['http', 'dns', 9000], 'stored as the name');
  const frontend = (port: number, protocol = 'TCP') => services.frontends.get(`${web.clusterIP}:${port}/${protocol}`);
  const backendsOf = (port: number, protocol = 'TCP') => frontend(port, protocol)?.backends.map((b) => `${b.ip}:${b.port}`);
  services.upsertPod({ key: 'endpoints/n1/a', ipv4: '10.244.0.1', namespace: 'default', labels: { app: 'web' }, ports: [{ name: 'http', port: 8080, protocol: 'TCP' }, { name: 'dns', port: 5353, protocol: 'UDP' }] });
  // Another version of the app serves http elsewhere, and names a TCP port dns (not the UDP one the service wants).
  services.upsertPod({ key: 'endpoints/n1/b', ipv4: '10.244.0.2', namespace: 'default', labels: { app: 'web' }, ports: [{ name: 'http', port: 9090, protocol: 'TCP' }, { name: 'dns', port: 53, protocol: 'TCP' }] });
  services.upsertPod({ key: 'endpoints/n2/c', ipv4: '10.244.1.3', namespace: 'default', labels: { app: 'web' } });
  assert.deepEqual(backendsOf(80), ['10.244.0.1:8080', '10.244.0.2:9090'], 'each pod on its own number');
  assert.deepEqual(frontend(80)?.unresolved, ['10.244.1.3'], 'a pod without named ports is visibly left out');
  assert.deepEqual(backendsOf(53, 'UDP'), ['10.244.0.1:5353'], 'the name must have the service port\'s protocol');
  assert.deepEqual(frontend(53, 'UDP')?.unresolved, ['10.244.0.2', '10.244.1.3']);
  assert.deepEqual(backendsOf(90), ['10.244.0.1:9000', '10.244.0.2:9000', '10.244.1.3:9000'], 'a number applies to every pod');
  assert.equal(frontend(90)?.unresolved, undefined);
  // The pod gains the port: it becomes a backend.
  services.upsertPod({ key: 'endpoints/n2/c', ipv4: '10.244.1.3', namespace: 'default', labels: { app: 'web' }, ports: [{ name: 'http', port: 8080, protocol: 'TCP' }] });
  assert.deepEqual(backendsOf(80), ['10.244.0.1:8080', '10.244.0.2:9090', '10.244.1.3:8080']);
  assert.equal(frontend(80)?.unresolved, undefined);
  // Explicit backends have no named ports: refused by field.
  assert.throws(() => parse({ name: 'ext', backends: [{ ip: '192.0.2.1' }], ports: [{ port: 80, targetPort: 'http' }] }), /ports\.0\.targetPort: a named target port \("http"\) needs a selector/);
  assert.throws(() => parse({ name: 'bad', selector: { app: 'web' }, ports: [{ port: 80, targetPort: 'Http_1' }] }), /ports\.0\.targetPort: must be lower case letters, digits and -/);
});

test('several services are created in one transaction, or none of them', async (t) => {
  const { store, services } = await setup(t);
  const before = await store.list(SERVICES_PREFIX);
  // The second asks for the first's ClusterIP: nothing of either is written.
  await assert.rejects(
    services.createMany([parse({ name: 'a', clusterIP: '10.96.0.10', ports: [{ port: 80 }] }), parse({ name: 'b', clusterIP: '10.96.0.10', ports: [{ port: 80 }] })]),
    (error: unknown) => ServiceError.is(error, 'ERR_CLUSTER_IP_IN_USE') && /default\/b: field clusterIP: 10\.96\.0\.10 belongs to service default\/a \(in the same request\)/.test((error as Error).message),
  );
  assert.deepEqual((await store.list(SERVICES_PREFIX)).entries, before.entries);
  const { services: created, revision } = await services.createMany([parse({ name: 'a', ports: [{ port: 80 }] }), parse({ name: 'b', type: 'NodePort', ports: [{ port: 80 }] })]);
  await services.synced(revision);
  assert.equal(new Set(created.map((s) => s.clusterIP)).size, 2, 'two addresses allocated in one batch');
  assert.deepEqual(services.list().map((s) => s.name), ['a', 'b']);
  // One of a batch existing already refuses the batch.
  await assert.rejects(services.createMany([parse({ name: 'c', ports: [{ port: 80 }] }), parse({ name: 'a', ports: [{ port: 81 }] })]), (error: unknown) => ServiceError.is(error, 'ERR_SERVICE_EXISTS'));
  assert.deepEqual(services.list().map((s) => s.name), ['a', 'b']);
});

test('a terminating pod or drained explicit backend leaves the slots but stays among the frontend\'s terminating backends', async (t) => {
  const { services, create } = await setup(t);
  await create({ name: 'web', selector: { app: 'web' }, ports: [{ port: 80 }] });
  services.upsertPod({ key: 'endpoints/n1/a', ipv4: '10.244.0.1', namespace: 'default', labels: { app: 'web' } });
  services.upsertPod({ key: 'endpoints/n1/b', ipv4: '10.244.0.2', namespace: 'default', labels: { app: 'web' } });
  services.terminatePod('endpoints/n1/a');
  const [web] = services.frontendsOf('default/web');
  assert.deepEqual(web.backends.map((b) => b.ip), ['10.244.0.2']);
  assert.deepEqual(web.terminating?.map((b) => b.ip), ['10.244.0.1']);
  services.deletePod('endpoints/n1/a');
  assert.equal(services.frontendsOf('default/web')[0].terminating, undefined, 'gone with its record');

  await create({ name: 'ext', backends: [{ ip: '192.0.2.1' }, { ip: '192.0.2.2' }], ports: [{ port: 80 }] });
  const { revision } = await services.setBackend('default', 'ext', '192.0.2.1', 'terminating');
  await services.synced(revision);
  const [ext] = services.frontendsOf('default/ext');
  assert.deepEqual([ext.backends.map((b) => b.ip), ext.terminating?.map((b) => b.ip)], [['192.0.2.2'], ['192.0.2.1']]);
  await assert.rejects(services.setBackend('default', 'ext', '192.0.2.9', 'terminating'), (e: unknown) => e instanceof ServiceError && e.code === 'ERR_BACKEND_NOT_FOUND');
  await assert.rejects(services.setBackend('default', 'web', '10.244.0.2', 'terminating'), (e: unknown) => e instanceof ServiceError && /selects its backends/.test(e.message));
  assert.throws(() => parse({ name: 'dup', backends: [{ ip: '192.0.2.1' }, { ip: '192.0.2.1' }], ports: [{ port: 80 }] }), /backends\.1\.ip|backends\[1\]\.ip/);
});

test('toServices peers: a selector service is its selector, an explicit backend a pod\'s labels or its /32', async (t) => {
  const { services, create } = await setup(t);
  await create({ name: 'web', namespace: 'shop', selector: { app: 'web' }, ports: [{ port: 80 }], labels: { tier: 'front' } });
  await create({ name: 'ext', namespace: 'shop', backends: [{ ip: '10.244.0.7' }, { ip: '192.0.2.1' }], ports: [{ port: 80 }] });
  services.upsertPod({ key: 'endpoints/n1/db', ipv4: '10.244.0.7', namespace: 'shop', labels: { app: 'db' } });
  const ns = 'k8s:io.kubernetes.pod.namespace';
  assert.deepEqual(services.policyPeers({ namespace: 'shop', name: 'web' }), { endpoints: [{ matchLabels: { 'any:app': 'web', [ns]: 'shop' }, matchExpressions: [] }], cidrs: [] });
  assert.deepEqual(services.policyPeers({ namespace: 'shop', name: 'ext' }), {
    endpoints: [{ matchLabels: { 'any:app': 'db', [ns]: 'shop' }, matchExpressions: [] }],
    cidrs: [{ cidr: '192.0.2.1/32', except: [] }],
  });
  assert.deepEqual(services.policyPeers({ namespace: 'other', name: 'web' }), { endpoints: [], cidrs: [] }, 'another namespace\'s service is not it');
  assert.equal(services.policyPeers({ namespace: 'shop', selector: { matchLabels: { 'any:tier': 'front' }, matchExpressions: [] } }).endpoints.length, 1, 'selected by its labels');
  assert.equal(services.policyPeers({ selector: { matchLabels: { 'any:tier': 'back' }, matchExpressions: [] } }).endpoints.length, 0);
});
