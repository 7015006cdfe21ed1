/**
 * The store module's etcd settings: direct settings, a Cilium-style etcd config file, the
 * ConfigErrors that name the field, and a real etcd with TLS client-cert auth reached through them.
 * @module
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { EtcdStateStore, StoreError } from '../../store/index.ts';
import { createTestPki, startEtcd } from '../../store/etcd-testing.ts';
import { ConfigError } from '../config.ts';
import { loadConfig, type AgentConfig } from './index.ts';
import { checkLocalStoreSettings, etcdStoreOptions } from './store.ts';

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ciliate-store-config-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function configError(promise: Promise<unknown> | (() => unknown), pattern: RegExp): Promise<void> {
  await assert.rejects(async () => (typeof promise === 'function' ? promise() : promise), (error: unknown) => {
    assert.ok(error instanceof ConfigError, `expected a ConfigError, got ${String(error)}`);
    assert.match(error.message, pattern);
    return true;
  });
}

test('store settings: flags and CILIATE_ETCD_* environment variables, the password only from a file', async (t) => {
  const dir = await tempDir(t);
  const passwordFile = join(dir, 'password');
  await writeFile(passwordFile, 's3cret\n');
  const config = loadConfig({
    env: { CILIATE_STORE: 'etcd', CILIATE_ETCD_ENDPOINTS: 'https://10.0.0.1:2379,https://10.0.0.2:2379', CILIATE_ETCD_CA_FILE: '/etc/ciliate/etcd-ca.crt', CILIATE_ETCD_PASSWORD_FILE: passwordFile },
    flags: { etcdCertFile: '/etc/ciliate/etcd.crt', etcdKeyFile: '/etc/ciliate/etcd.key', etcdUsername: 'ciliate' },
  });
  assert.deepEqual(await etcdStoreOptions(config), {
    endpoints: ['https://10.0.0.1:2379', 'https://10.0.0.2:2379'],
    tls: { caFile: '/etc/ciliate/etcd-ca.crt', certFile: '/etc/ciliate/etcd.crt', keyFile: '/etc/ciliate/etcd.key' },
    auth: { username: 'ciliate', password: 's3cret' },
  });
  assert.ok(!('etcdPassword' in config), 'no setting (and so no flag) carries a password');
});

test("store settings: a Cilium etcd config file gives endpoints, TLS files and credentials, in Cilium's field names", async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'etcd.config');
  await writeFile(file, ['endpoints:', '- https://192.168.0.1:2379', 'trusted-ca-file: /var/lib/etcd-secrets/etcd-client-ca.crt', 'key-file: /var/lib/etcd-secrets/etcd-client.key', 'cert-file: /var/lib/etcd-secrets/etcd-client.crt', 'username: cilium', 'password: pw', 'dial-timeout: 5s', ''].join('\n'));
  const config = loadConfig({ flags: { store: 'etcd', etcdConfig: file } });
  assert.deepEqual(await etcdStoreOptions(config), {
    endpoints: ['https://192.168.0.1:2379'],
    tls: { caFile: '/var/lib/etcd-secrets/etcd-client-ca.crt', certFile: '/var/lib/etcd-secrets/etcd-client.crt', keyFile: '/var/lib/etcd-secrets/etcd-client.key' },
    auth: { username: 'cilium', password: 'pw' },
  });
  // Cilium's older name for the CA.
  await writeFile(file, 'endpoints: [https://192.168.0.1:2379]\nca-file: /ca.crt\n');
  assert.deepEqual((await etcdStoreOptions(config)).tls, { caFile: '/ca.crt', certFile: undefined, keyFile: undefined });
});

test('store settings: mistakes are ConfigErrors naming the field', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'etcd.config');
  const empty = join(dir, 'empty');
  await writeFile(empty, '\n');
  const etcd = (flags: Partial<AgentConfig>): AgentConfig => loadConfig({ flags: { store: 'etcd', ...flags } });
  const https = ['https://10.0.0.1:2379'];
  await configError(etcdStoreOptions(etcd({})), /set etcdEndpoints \(--etcd-endpoints\) or endpoints in etcdConfig/);
  await configError(etcdStoreOptions(etcd({ etcdEndpoints: ['http://10.0.0.1:2379'], etcdCaFile: '/ca.crt' })), /etcdCaFile \(--etcd-ca-file\) is set but endpoint http:\/\/10\.0\.0\.1:2379 is http:\/\//);
  await configError(etcdStoreOptions(etcd({ etcdEndpoints: ['http://10.0.0.1:2379'], etcdCertFile: '/c.crt', etcdKeyFile: '/c.key' })), /etcdCertFile \(--etcd-cert-file\) is set but endpoint http:/);
  await configError(etcdStoreOptions(etcd({ etcdEndpoints: https, etcdCertFile: '/c.crt' })), /etcdCertFile \(--etcd-cert-file\) needs etcdKeyFile \(--etcd-key-file\)/);
  await configError(etcdStoreOptions(etcd({ etcdEndpoints: https, etcdUsername: 'u' })), /etcdUsername \(--etcd-username\) needs a password: etcdPasswordFile/);
  await configError(etcdStoreOptions(etcd({ etcdEndpoints: https, etcdPasswordFile: join(dir, 'nope') })), /etcdPasswordFile .*nope: cannot read: ENOENT/);
  await configError(etcdStoreOptions(etcd({ etcdEndpoints: https, etcdUsername: 'u', etcdPasswordFile: empty })), /etcdPasswordFile .*empty: is empty/);
  await configError(etcdStoreOptions(etcd({ etcdConfig: join(dir, 'missing.config') })), /etcdConfig .*missing\.config: cannot read/);
  await writeFile(file, 'endpoints: [https://10.0.0.1:2379]\ntrusted-ca-fil: /ca.crt\n');
  await configError(etcdStoreOptions(etcd({ etcdConfig: file })), /etcdConfig .*etcd\.config: field trusted-ca-fil: unknown/);
  await writeFile(file, 'endpoints: [https://10.0.0.1:2379]\ninsecure-skip-tls-verify: true\n');
  await configError(etcdStoreOptions(etcd({ etcdConfig: file })), /field insecure-skip-tls-verify: not supported/);
  await writeFile(file, 'endpoints: [10.0.0.1:2379]\n');
  await configError(etcdStoreOptions(etcd({ etcdConfig: file })), /field endpoints: must be a list of http\(s\):\/\/host:port URLs/);
  await writeFile(file, 'endpoints: [https://10.0.0.1:2379]\ntrusted-ca-file: /ca.crt\n');
  await configError(etcdStoreOptions(etcd({ etcdConfig: file, etcdCaFile: '/other.crt' })), /etcdCaFile \(--etcd-ca-file\) and trusted-ca-file in etcdConfig .* are both set/);
  await configError(etcdStoreOptions(etcd({ etcdConfig: file, etcdEndpoints: https })), /etcdEndpoints \(--etcd-endpoints\) and endpoints in etcdConfig/);
  await configError(() => checkLocalStoreSettings(loadConfig({ flags: { etcdCaFile: '/ca.crt' } })), /store local: etcdCaFile \(--etcd-ca-file\) is set but the store is local/);
  await configError(() => checkLocalStoreSettings(loadConfig({ env: { CILIATE_ETCD_ENDPOINTS: 'http://10.0.0.1:2379' } })), /store local: etcdEndpoints/);
  checkLocalStoreSettings(loadConfig());
});

test('store settings: a Cilium etcd config reaches a real etcd that demands client certificates', async (t) => {
  const pki = await createTestPki(t);
  const etcd = await startEtcd(t, { tls: { pki, clientCertAuth: true } });
  const dir = await tempDir(t);
  const file = join(dir, 'etcd.config');
  await writeFile(file, `endpoints:\n- ${etcd.clientUrl}\ntrusted-ca-file: ${pki.caFile}\ncert-file: ${pki.client.certFile}\nkey-file: ${pki.client.keyFile}\n`);
  const store = await EtcdStateStore.connect(await etcdStoreOptions(loadConfig({ flags: { store: 'etcd', etcdConfig: file } })));
  t.after(() => store.close());
  assert.equal((await store.put('k', 1)).revision, 1);
  // The same file without the client certificate is refused by etcd, with the reason.
  await writeFile(file, `endpoints:\n- ${etcd.clientUrl}\ntrusted-ca-file: ${pki.caFile}\n`);
  await assert.rejects(
    async () => EtcdStateStore.connect(await etcdStoreOptions(loadConfig({ flags: { store: 'etcd', etcdConfig: file } }))),
    (error: unknown) => StoreError.is(error, 'ERR_STORE_TLS') && /etcd refused the client certificate/.test(error.message),
  );
});
