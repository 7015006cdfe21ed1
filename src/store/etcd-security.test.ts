/**
 * etcd over TLS with client certificates, and etcd's username/password auth, against real etcd
 * processes on https loopback (certificates from a throw-away CA made with openssl per test).
 * @module
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { Etcd3 } from 'etcd3';
import { StoreError, type StoreErrorCode } from './errors.ts';
import { EtcdStateStore, type EtcdStateStoreOptions } from './etcd-store.ts';
import { createTestPki, startEtcd, type TestPki } from './etcd-testing.ts';
import { take } from './state-store.case.ts';

const PREFIX = '/ciliate-test/';

async function connect(t: TestContext, options: EtcdStateStoreOptions): Promise<EtcdStateStore> {
  const store = await EtcdStateStore.connect({ prefix: PREFIX, ...options });
  t.after(() => store.close());
  return store;
}

/** Connecting must fail with `code`, quickly (not by running into the deadline), and `pattern` in the message. */
async function refused(options: EtcdStateStoreOptions, code: StoreErrorCode, pattern: RegExp): Promise<StoreError> {
  const started = Date.now();
  let caught: unknown;
  try {
    const store = await EtcdStateStore.connect({ prefix: PREFIX, timeoutMs: 10_000, ...options });
    await store.close();
  } catch (error) {
    caught = error;
  }
  assert.ok(StoreError.is(caught, code), `expected ${code}, got ${String((caught as Error | undefined)?.stack ?? caught)}`);
  assert.match(caught.message, pattern);
  assert.ok(Date.now() - started < 5000, `refused after ${Date.now() - started} ms: should fail fast, not at the 10 s deadline`);
  return caught;
}

const clientTls = (pki: TestPki) => ({ caFile: pki.caFile, certFile: pki.client.certFile, keyFile: pki.client.keyFile });

test('etcd TLS: with client-cert-auth, the right client certificate reads, writes and watches', async (t) => {
  const pki = await createTestPki(t);
  const etcd = await startEtcd(t, { tls: { pki, clientCertAuth: true } });
  assert.match(etcd.clientUrl, /^https:\/\//);
  const store = await connect(t, { endpoints: etcd.endpoints, tls: clientTls(pki) });
  const watch = store.watch('policies/');
  t.after(() => watch.close());
  const { revision } = await store.put('policies/p1', { deny: true }, { expectedRevision: 0 });
  assert.deepEqual((await store.get('policies/p1'))?.value, { deny: true });
  const [event] = await take(watch, 1);
  assert.equal(event.revision, revision);
  // PEM given inline works the same as files.
  const inline = await connect(t, {
    endpoints: etcd.endpoints,
    tls: { ca: await readFile(pki.caFile, 'utf8'), cert: await readFile(pki.client.certFile), key: await readFile(pki.client.keyFile) },
  });
  assert.equal((await inline.get('policies/p1'))?.modRevision, revision);
});

test('etcd TLS: no client certificate, or one from another CA, is refused naming the endpoint', async (t) => {
  const pki = await createTestPki(t);
  const etcd = await startEtcd(t, { tls: { pki, clientCertAuth: true } });
  const endpoint = etcd.endpoints[0].replace(/[/.]/g, '\\$&');
  await refused({ endpoints: etcd.endpoints, tls: { caFile: pki.caFile } }, 'ERR_STORE_TLS', new RegExp(`TLS to etcd at ${endpoint} failed: etcd refused the client certificate`));
  await refused(
    { endpoints: etcd.endpoints, tls: { caFile: pki.caFile, certFile: pki.other.certFile, keyFile: pki.other.keyFile } },
    'ERR_STORE_TLS',
    new RegExp(`TLS to etcd at ${endpoint} failed: etcd refused the client certificate`),
  );
});

test("etcd TLS: a server certificate the client's CA did not sign is refused", async (t) => {
  const pki = await createTestPki(t);
  const etcd = await startEtcd(t, { tls: { pki } });
  await refused({ endpoints: etcd.endpoints, tls: { caFile: pki.other.caFile } }, 'ERR_STORE_TLS', /server certificate is not signed by the trusted CA \(check caFile\)/);
  // https:// without TLS settings trusts only the public CAs, which did not sign this one either.
  await refused({ endpoints: etcd.endpoints }, 'ERR_STORE_TLS', /not signed by the trusted CA/);
  // The CA alone suffices when etcd does not ask for client certificates.
  const store = await connect(t, { endpoints: etcd.endpoints, tls: { caFile: pki.caFile } });
  await store.put('k', 1);
});

test('etcd TLS: unreadable, unparsable or mismatched files fail before connecting, naming the file', async (t) => {
  const pki = await createTestPki(t);
  // Nothing listens here: each error must come from the settings, not from a connection attempt.
  const endpoints = ['https://127.0.0.1:9'];
  const missing = join(pki.dir, 'missing.crt');
  await refused({ endpoints, tls: { caFile: missing } }, 'ERR_STORE_TLS', new RegExp(`cannot read trusted CA file ${missing}: ENOENT`));
  const garbage = join(pki.dir, 'garbage.pem');
  await writeFile(garbage, 'not a certificate\n');
  await refused({ endpoints, tls: { caFile: garbage } }, 'ERR_STORE_TLS', new RegExp(`trusted CA file ${garbage} is not a PEM certificate`));
  await refused({ endpoints, tls: { ...clientTls(pki), keyFile: garbage } }, 'ERR_STORE_TLS', new RegExp(`client key file ${garbage} is not an unencrypted PEM private key`));
  await refused({ endpoints, tls: { ...clientTls(pki), keyFile: pki.other.keyFile } }, 'ERR_STORE_TLS', new RegExp(`client key file ${pki.other.keyFile} is not the key of client certificate file ${pki.client.certFile}`));
  await refused({ endpoints, tls: { caFile: pki.caFile, certFile: pki.client.certFile } }, 'ERR_STORE_INVALID_ARGUMENT', /client certificate file .* is given without its client key/);
  await refused({ endpoints, tls: { caFile: pki.caFile, ca: 'x' } }, 'ERR_STORE_INVALID_ARGUMENT', /as PEM or as a file, not both/);
  await refused({ endpoints: ['http://127.0.0.1:9'], tls: { caFile: pki.caFile } }, 'ERR_STORE_INVALID_ARGUMENT', /TLS settings are given but endpoint http:\/\/127\.0\.0\.1:9 is http:\/\//);
  await refused({ endpoints: ['https://127.0.0.1:9', 'http://127.0.0.1:10'] }, 'ERR_STORE_INVALID_ARGUMENT', /endpoints mix http:\/\/ and https:\/\//);
  await refused({ endpoints, auth: { username: 'root', password: '' } }, 'ERR_STORE_INVALID_ARGUMENT', /auth\.password of user root/);
});

/** Turns on etcd's auth with user root (role root) and a user `ciliate` limited to PREFIX. */
async function enableAuth(t: TestContext, endpoints: string[], pki: TestPki): Promise<void> {
  const admin = new Etcd3({ hosts: endpoints, credentials: { rootCertificate: await readFile(pki.caFile) } });
  t.after(() => admin.close());
  await admin.role('root').create();
  await (await admin.user('root').create('root-secret')).addRole('root');
  const role = await admin.role('ciliate').create();
  await role.grant({ permission: 'Readwrite', range: admin.range({ prefix: PREFIX }) });
  await (await admin.user('ciliate').create('s3cret')).addRole('ciliate');
  await admin.auth.authEnable();
}

test('etcd auth: the right username/password works; a wrong one, none, or a user without permission is refused', async (t) => {
  const pki = await createTestPki(t);
  const etcd = await startEtcd(t, { tls: { pki } });
  await enableAuth(t, etcd.endpoints, pki);
  const tls = { caFile: pki.caFile };
  const store = await connect(t, { endpoints: etcd.endpoints, tls, auth: { username: 'ciliate', password: 's3cret' } });
  const watch = store.watch('nodes/');
  t.after(() => watch.close());
  await store.put('nodes/n1', { ip: '192.168.0.10' });
  assert.equal((await take(watch, 1))[0].key, 'nodes/n1');
  await refused({ endpoints: etcd.endpoints, tls, auth: { username: 'ciliate', password: 'wrong' } }, 'ERR_STORE_AUTH', /refused the username\/password/);
  await refused({ endpoints: etcd.endpoints, tls }, 'ERR_STORE_AUTH', /denied the request \(etcd auth is enabled/);
  await refused({ endpoints: etcd.endpoints, tls, auth: { username: 'ciliate', password: 's3cret' }, prefix: '/elsewhere/' }, 'ERR_STORE_AUTH', /lacks permission on \/elsewhere\//);
});

test('etcd auth with client-cert-auth: the certificate CN is the user', async (t) => {
  const pki = await createTestPki(t);
  const etcd = await startEtcd(t, { tls: { pki, clientCertAuth: true } });
  const admin = new Etcd3({ hosts: etcd.endpoints, credentials: { rootCertificate: await readFile(pki.caFile), certChain: await readFile(pki.client.certFile), privateKey: await readFile(pki.client.keyFile) } });
  t.after(() => admin.close());
  await admin.role('root').create();
  await (await admin.user('root').create('root-secret')).addRole('root');
  await admin.auth.authEnable();
  // The client certificate's CN is "root": no password needed.
  const store = await connect(t, { endpoints: etcd.endpoints, tls: clientTls(pki) });
  await store.put('k', 1);
});

test('etcd auth: after an etcd restart (its tokens are gone), requests and watches authenticate again', async (t) => {
  const pki = await createTestPki(t);
  const etcd = await startEtcd(t, { tls: { pki } });
  await enableAuth(t, etcd.endpoints, pki);
  const store = await connect(t, { endpoints: etcd.endpoints, tls: { caFile: pki.caFile }, auth: { username: 'ciliate', password: 's3cret' } });
  const watch = store.watch('nodes/');
  t.after(() => watch.close());
  await store.put('nodes/n1', 1);
  assert.equal((await take(watch, 1))[0].key, 'nodes/n1');
  await etcd.restart();
  await store.put('nodes/n2', 2);
  assert.equal((await take(watch, 1))[0].key, 'nodes/n2');
});
