/**
 * The state store module: the embedded store on disk (one node, the default) or etcd (several
 * nodes sharing one cluster state), reached over TLS with a client certificate and/or etcd's
 * username/password when configured.
 *
 * A torn journal tail that opening had to cut off is never passed over: it is logged at error
 * level, recorded in the store (under `store/recoveries/`, so it outlives restarts) and keeps the
 * module degraded until an operator, having checked the node's endpoints against the kernel,
 * acknowledges it (`ciliate store acknowledge`, `POST /v1/store/recoveries/acknowledge`).
 * @module
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { EtcdStateStore, LocalStateStore, StoreError, type EtcdStateStoreOptions, type JournalRecovery } from '../../store/index.ts';
import { ConfigError } from '../config.ts';
import { defineModule } from '../module.ts';
import { StoreCell } from './cells.ts';

const path = (what: string) => z.string().default('').describe(what);

export const storeConfig = {
  store: z.enum(['local', 'etcd']).default('local').describe('local (embedded in --state-dir, one node) or etcd (shared by several nodes)'),
  stateDir: z.string().min(1).default('/var/lib/ciliate').describe("where the agent keeps its state: the embedded state store's files, the DNS proxy's FQDN cache"),
  etcdEndpoints: z.array(z.string().url()).default([]).describe('etcd client URLs, comma-separated (with --store etcd)'),
  etcdConfig: path("Cilium-style etcd client config file (YAML: endpoints, trusted-ca-file, cert-file, key-file, username, password), as Cilium's --kvstore-opt etcd.config"),
  etcdCaFile: path("CA certificate (PEM) that signed etcd's server certificate (https:// endpoints)"),
  etcdCertFile: path("client certificate (PEM) for etcd's --client-cert-auth (with --etcd-key-file)"),
  etcdKeyFile: path('private key (unencrypted PEM) of --etcd-cert-file'),
  etcdUsername: path('etcd user, when etcd auth is enabled (password from --etcd-password-file)'),
  etcdPasswordFile: path("file holding the etcd user's password (there is no password flag: command lines are visible to every process)"),
};

type StoreSettings = { readonly [K in keyof typeof storeConfig]: z.infer<(typeof storeConfig)[K]> };

/** The etcd settings, as flags name them in errors. */
const ETCD_FIELDS = ['etcdEndpoints', 'etcdConfig', 'etcdCaFile', 'etcdCertFile', 'etcdKeyFile', 'etcdUsername', 'etcdPasswordFile'] as const;
const flag = (field: string): string => `${field} (--${field.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)})`;

/** What Cilium's etcd config (etcd's client YAML) may hold, by our name. */
interface EtcdConfigFile {
  endpoints?: string[];
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  username?: string;
  password?: string;
}

const CONFIG_FILE_FIELDS: Record<string, keyof EtcdConfigFile> = {
  endpoints: 'endpoints',
  'trusted-ca-file': 'caFile',
  // Cilium's older name for trusted-ca-file.
  'ca-file': 'caFile',
  'cert-file': 'certFile',
  'key-file': 'keyFile',
  username: 'username',
  password: 'password',
};
/** etcd client tuning the etcd client YAML allows; accepted so Cilium's files load, not used. */
const IGNORED_CONFIG_FILE_FIELDS = new Set(['auto-sync-interval', 'dial-timeout', 'dial-keep-alive-time', 'dial-keep-alive-timeout', 'max-call-send-msg-size', 'max-call-recv-msg-size', 'reject-old-cluster', 'insecure-transport']);

/** Reads a Cilium-style etcd config file: `etcd.config` of `--kvstore-opt`. */
export async function readEtcdConfigFile(file: string): Promise<EtcdConfigFile> {
  let parsed: unknown;
  try {
    parsed = parseYaml(await readFile(file, 'utf8'));
  } catch (error) {
    throw new ConfigError(`etcdConfig ${file}: cannot read: ${(error as Error).message}`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new ConfigError(`etcdConfig ${file}: must be a mapping (endpoints, trusted-ca-file, ...)`);
  const out: EtcdConfigFile = {};
  for (const [name, value] of Object.entries(parsed)) {
    if (IGNORED_CONFIG_FILE_FIELDS.has(name)) continue;
    if (name === 'insecure-skip-tls-verify') {
      // Whoever can reach the underlay could then pose as etcd and hand the agent any policy.
      if (value === true) throw new ConfigError(`etcdConfig ${file}: field insecure-skip-tls-verify: not supported; set trusted-ca-file to etcd's CA`);
      continue;
    }
    const field = CONFIG_FILE_FIELDS[name];
    if (field === undefined) throw new ConfigError(`etcdConfig ${file}: field ${name}: unknown (known: ${Object.keys(CONFIG_FILE_FIELDS).join(', ')})`);
    if (field === 'endpoints') {
      const list = typeof value === 'string' ? value.split(',') : value;
      if (!Array.isArray(list) || list.length === 0 || list.some((e) => typeof e !== 'string' || !/^https?:\/\/[^/]+\/?$/.test(e))) {
        throw new ConfigError(`etcdConfig ${file}: field endpoints: must be a list of http(s)://host:port URLs`);
      }
      out.endpoints = list as string[];
    } else {
      if (typeof value !== 'string' || value === '') throw new ConfigError(`etcdConfig ${file}: field ${name}: must be a non-empty string`);
      if (out[field] !== undefined) throw new ConfigError(`etcdConfig ${file}: field ${name}: given twice (trusted-ca-file and ca-file)`);
      out[field] = value;
    }
  }
  return out;
}

async function readPassword(file: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new ConfigError(`etcdPasswordFile ${file}: cannot read: ${(error as Error).message}`);
  }
  // Files written with echo end in a newline that is not part of the password.
  const password = text.replace(/\r?\n$/, '');
  if (password === '') throw new ConfigError(`etcdPasswordFile ${file}: is empty`);
  return password;
}

/**
 * The etcd client options from the agent's settings: `etcdConfig` and the direct settings may
 * each give an item, not both. Every problem is a ConfigError naming the field.
 */
export async function etcdStoreOptions(config: StoreSettings): Promise<EtcdStateStoreOptions> {
  const file = config.etcdConfig === '' ? {} : await readEtcdConfigFile(config.etcdConfig);
  const pick = (field: (typeof ETCD_FIELDS)[number], direct: string, fromFile: string | undefined, fileField: string): string | undefined => {
    if (direct !== '' && fromFile !== undefined) throw new ConfigError(`store etcd: ${flag(field)} and ${fileField} in etcdConfig ${config.etcdConfig} are both set; keep one`);
    return direct !== '' ? direct : fromFile;
  };
  if (config.etcdEndpoints.length > 0 && file.endpoints !== undefined) {
    throw new ConfigError(`store etcd: ${flag('etcdEndpoints')} and endpoints in etcdConfig ${config.etcdConfig} are both set; keep one`);
  }
  const endpoints = file.endpoints ?? config.etcdEndpoints;
  if (endpoints.length === 0) throw new ConfigError('store etcd: set etcdEndpoints (--etcd-endpoints) or endpoints in etcdConfig (--etcd-config)');
  const caFile = pick('etcdCaFile', config.etcdCaFile, file.caFile, 'trusted-ca-file');
  const certFile = pick('etcdCertFile', config.etcdCertFile, file.certFile, 'cert-file');
  const keyFile = pick('etcdKeyFile', config.etcdKeyFile, file.keyFile, 'key-file');
  const username = pick('etcdUsername', config.etcdUsername, file.username, 'username');
  if (config.etcdPasswordFile !== '' && file.password !== undefined) {
    throw new ConfigError(`store etcd: ${flag('etcdPasswordFile')} and password in etcdConfig ${config.etcdConfig} are both set; keep one`);
  }
  const password = config.etcdPasswordFile !== '' ? await readPassword(config.etcdPasswordFile) : file.password;

  if ((certFile === undefined) !== (keyFile === undefined)) {
    throw new ConfigError(`store etcd: ${certFile === undefined ? `${flag('etcdKeyFile')} needs ${flag('etcdCertFile')}` : `${flag('etcdCertFile')} needs ${flag('etcdKeyFile')}`}`);
  }
  if ((username === undefined) !== (password === undefined)) {
    throw new ConfigError(`store etcd: ${username === undefined ? `a password needs ${flag('etcdUsername')}` : `${flag('etcdUsername')} needs a password: ${flag('etcdPasswordFile')}`}`);
  }
  const tlsField = caFile !== undefined ? 'etcdCaFile' : certFile !== undefined ? 'etcdCertFile' : undefined;
  const plain = endpoints.find((e) => e.startsWith('http://'));
  if (tlsField !== undefined && plain !== undefined) {
    throw new ConfigError(`store etcd: ${flag(tlsField)} is set but endpoint ${plain} is http://; TLS needs https:// endpoints`);
  }
  return {
    endpoints,
    tls: caFile === undefined && certFile === undefined ? undefined : { caFile, certFile, keyFile },
    auth: username === undefined || password === undefined ? undefined : { username, password },
  };
}

/** etcd settings given with the local store would be silently unused: a ConfigError naming the first. */
export function checkLocalStoreSettings(config: StoreSettings): void {
  for (const field of ETCD_FIELDS) {
    const value = config[field];
    if (Array.isArray(value) ? value.length > 0 : value !== '') {
      throw new ConfigError(`store local: ${flag(field)} is set but the store is local; set store: etcd (--store etcd) or remove it`);
    }
  }
}

/** Unacknowledged losses of the embedded store, one key per recovery: what a reconciler can check the kernel against. */
export const STORE_RECOVERIES_PREFIX = 'store/recoveries/';

/** A dropped journal tail as kept in the store: where, how much, the last revision kept, and when. */
export interface StoreRecoveryRecord extends Omit<JournalRecovery, 'message'> {
  /** When the agent opened the store and cut the tail off (ISO 8601). */
  readonly at: string;
}

export const storeModule = defineModule({
  name: 'store',
  description: 'the state store: embedded on disk, or etcd',
  config: storeConfig,
  needs: {},
  provides: StoreCell,
  async start(_, { config, log, api }) {
    if (config.store === 'etcd') {
      const options = await etcdStoreOptions(config);
      if (options.auth !== undefined && [options.endpoints].flat().some((e) => e.startsWith('http://'))) {
        log.warn({ endpoints: options.endpoints }, 'etcd password sent over plain http://; use https:// endpoints with etcdCaFile');
      }
      const store = await EtcdStateStore.connect(options);
      return { value: store, stop: () => store.close(), status: () => ({ store: { kind: config.store, revision: store.revision } }) };
    }
    checkLocalStoreSettings(config);
    const store = await openStoreWaitingForLock(join(config.stateDir, 'store'), log);
    if (store.recovery !== undefined) {
      const { message, ...fields } = store.recovery;
      log.error({ recovery: fields }, `${message}; the agent stays degraded until this is acknowledged (ciliate store acknowledge)`);
      const record: StoreRecoveryRecord = { ...fields, at: new Date().toISOString() };
      await store.put(`${STORE_RECOVERIES_PREFIX}${record.at}`, record);
    }
    // Read once, then kept current by this module's own writes: health() must not wait on the store.
    let recoveries = (await store.list<StoreRecoveryRecord>(STORE_RECOVERIES_PREFIX)).entries.map((e) => e.value);
    api.route('POST', '/v1/store/recoveries/acknowledge', async () => {
      const { entries, revision } = await store.list<StoreRecoveryRecord>(STORE_RECOVERIES_PREFIX);
      const deleted = entries.length === 0 ? { revision } : await store.transaction(entries.map((e) => ({ type: 'delete', key: e.key, expectedRevision: e.modRevision })));
      recoveries = [];
      if (entries.length > 0) log.warn({ acknowledged: entries.length }, 'store recoveries acknowledged');
      return { acknowledged: entries.map((e) => e.value), revision: deleted.revision };
    });
    return {
      value: store,
      stop: () => store.close(),
      health: () => {
        const last = recoveries.at(-1);
        if (last === undefined) return { degraded: false };
        return {
          degraded: true,
          reason:
            `the state store lost a journal tail of ${last.droppedBytes} bytes at byte ${last.truncatedAt} of ${last.file} (${last.reason}) at ${last.at}; ` +
            `state after revision ${last.lastRevision} may be missing: check the node's endpoints against the kernel, then run ciliate store acknowledge`,
        };
      },
      status: () => ({ store: { kind: config.store, revision: store.revision, ...(recoveries.length > 0 ? { recovered: recoveries } : {}) } }),
    };
  },
});

/** How long a starting agent waits for the store lock of a predecessor that is still exiting. */
const LOCK_WAIT_MS = 10_000;

/**
 * Opens the local store, waiting while another process holds its lock: an agent restarted right
 * after a kill -9 can find the old process still tearing down (closing BPF fds takes RCU grace periods).
 * The loss a recovery reports is logged by the caller, so the store's own warning is turned off.
 */
async function openStoreWaitingForLock(dir: string, log: Logger): Promise<LocalStateStore> {
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (let attempt = 0; ; attempt++) {
    try {
      return await LocalStateStore.open(dir, { onRecovery: () => {} });
    } catch (error) {
      if (!StoreError.is(error, 'ERR_STORE_LOCKED') || Date.now() > deadline) throw error;
      if (attempt === 0) log.warn({ err: error }, 'state store is locked; waiting for its holder to exit');
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
}
