/**
 * `ciliate relay`: Hubble Relay. It finds the agents through the shared store the agents use
 * (the same store flags as `ciliate agent`) and serves one Observer API over all of them.
 * @module
 */
import type { Command } from 'commander';
import { z } from 'zod';
import { AgentConfigSchema, ConfigError, VERSION, configSchema, createLogger, etcdStoreOptions, loadConfigWith, storeConfig } from '../agent/index.ts';
import { listenAddressSetting, parseListenAddress } from '../metrics/index.ts';
import { Addr } from '../net/index.ts';
import { ObserverGrpcServer, Relay, bindAddress, readClientTls, readServerTls, type ClientTlsMaterial, type ServerTlsMaterial } from '../observer/index.ts';
import { EtcdStateStore } from '../store/index.ts';
import { configOptions } from './agent.ts';

const millis = (what: string, fallback: number) => z.number().int().min(1).max(3_600_000).default(fallback).describe(what);

// The embedded store's directory is no setting of the relay's: it reads etcd only.
const { stateDir: _stateDir, ...relayStoreConfig } = storeConfig;

export const relayConfig = {
  ...relayStoreConfig,
  listenAddress: listenAddressSetting('localhost:4245').describe("the relay's Observer API on TCP, host:port (:port: every address); empty: Unix socket only (Hubble Relay's listen-address)"),
  relaySocketPath: z.string().default('').describe("the relay's Observer API on a root-only Unix socket as well (none by default)"),
  checkInterval: millis('milliseconds between status checks of every agent; also how soon a returning agent is seen again', 1000),
  dialTimeout: millis('milliseconds an agent has to answer before it counts as unavailable', 2000),
  sortBufferDrainTimeout: millis("milliseconds a followed flow waits for earlier flows of slower agents (Hubble Relay's sort-buffer-drain-timeout)", 1000),
  sortBufferLenMax: z.number().int().min(1).max(1 << 20).default(100).describe("flows held for time ordering at most (Hubble Relay's sort-buffer-len-max)"),
  tlsRelayServerCertFile: z.string().default('').describe("TLS certificate (PEM) of the relay's Observer API; with the key, the TCP listener is TLS only (Hubble Relay's tls-relay-server-cert-file)"),
  tlsRelayServerKeyFile: z.string().default('').describe('TLS private key (PEM) of --tls-relay-server-cert-file'),
  tlsRelayClientCaFiles: z.array(z.string()).default([]).describe('CAs (PEM) of the client certificates the TLS listener requires, comma-separated; none: no client certificate asked (mTLS off)'),
  disableServerTls: z.boolean().default(false).describe("serve plaintext only, refusing the server TLS settings (Hubble Relay's disable-server-tls); without certificates the relay serves plaintext anyway"),
  tlsHubbleServerCaFiles: z.array(z.string()).default([]).describe("CAs (PEM) that signed the agents' Observer API certificates, comma-separated; none: the system's roots (for agents publishing TLS)"),
  tlsHubbleClientCertFile: z.string().default('').describe("client certificate (PEM) presented to agents that ask for one (Hubble Relay's tls-hubble-client-cert-file)"),
  tlsHubbleClientKeyFile: z.string().default('').describe('private key (PEM) of --tls-hubble-client-cert-file'),
  tlsClientCertFile: z.string().default('').describe('old name of --tls-hubble-client-cert-file, as older Hubble Relays call it'),
  tlsClientKeyFile: z.string().default('').describe('old name of --tls-hubble-client-key-file'),
  disableClientTls: z.boolean().default(false).describe("dial agents in plaintext only (Hubble Relay's disable-client-tls): agents publishing a TLS listener are then unavailable"),
  logLevel: AgentConfigSchema.shape.logLevel,
};

const RelayConfigSchema = configSchema(relayConfig);
export type RelayConfig = z.infer<typeof RelayConfigSchema>;

/** Runs the relay until SIGTERM or SIGINT. */
export async function runRelay(config: RelayConfig): Promise<void> {
  // The embedded store is one agent's, locked by it: a relay can only share etcd.
  if (config.store !== 'etcd') throw new ConfigError('relay: the agents must share a store the relay can read: --store etcd with --etcd-endpoints or --etcd-config');
  if (!config.listenAddress && !config.relaySocketPath) throw new ConfigError('relay: nothing to serve on: set --listen-address or --relay-socket-path');
  // Certificates are read and checked before anything else: a wrong path is named at once.
  const serverTls = relayServerTls(config);
  const clientTls = relayClientTls(config);
  const log = createLogger(config.logLevel, 'relay');
  const store = await EtcdStateStore.connect(await etcdStoreOptions({ ...config, stateDir: '' }));
  const relay = new Relay({
    store,
    log,
    version: VERSION,
    checkIntervalMs: config.checkInterval,
    callTimeoutMs: config.dialTimeout,
    sortWindowMs: config.sortBufferDrainTimeout,
    sortBufferLength: config.sortBufferLenMax,
    tls: clientTls,
    disableClientTls: config.disableClientTls,
  });
  const server = new ObserverGrpcServer(relay);
  try {
    await relay.start();
    if (config.relaySocketPath) await server.listenUnix(config.relaySocketPath);
    const port = config.listenAddress ? await server.listenTcp(bindAddress(config.listenAddress), serverTls) : undefined;
    const host = config.listenAddress ? parseListenAddress(config.listenAddress)?.host : undefined;
    const loopback = host === 'localhost' || host === '::1' || (host !== undefined && Addr.tryParse(host)?.is4() === true && host.startsWith('127.'));
    if (port !== undefined && !serverTls && !loopback) {
      // Flows name every pod and policy of the cluster: in plaintext beyond loopback anyone on the path reads them.
      log.warn({ address: config.listenAddress }, 'relay: serving flows in plaintext beyond loopback; set --tls-relay-server-cert-file and --tls-relay-server-key-file');
    }
    log.info({ address: config.listenAddress || undefined, port, tls: serverTls ? (serverTls.clientCa ? 'mtls' : 'tls') : 'off', socket: config.relaySocketPath || undefined }, 'relay: Observer API listening');
    await new Promise<void>((resolve) => {
      process.once('SIGTERM', resolve);
      process.once('SIGINT', resolve);
    });
  } finally {
    await server.close();
    await relay.stop();
    await store.close();
  }
}

/** The relay listener's TLS, from Hubble Relay's settings; undefined: plaintext. */
function relayServerTls(config: RelayConfig): ServerTlsMaterial | undefined {
  const files = { certFile: config.tlsRelayServerCertFile, keyFile: config.tlsRelayServerKeyFile, clientCaFiles: config.tlsRelayClientCaFiles };
  const set = Boolean(files.certFile || files.keyFile || files.clientCaFiles.length > 0);
  if (config.disableServerTls) {
    if (set) throw new ConfigError('relay: --disable-server-tls contradicts --tls-relay-server-cert-file, --tls-relay-server-key-file and --tls-relay-client-ca-files; drop one or the other');
    return undefined;
  }
  if (!set) return undefined;
  // Client CAs without a certificate of our own would ask for client certificates over no TLS at all.
  return readServerTls(files, { cert: 'tls-relay-server-cert-file', key: 'tls-relay-server-key-file', cas: 'tls-relay-client-ca-files' });
}

/** What the relay trusts and presents towards agents publishing a TLS listener. */
function relayClientTls(config: RelayConfig): ClientTlsMaterial | undefined {
  const certFile = config.tlsHubbleClientCertFile || config.tlsClientCertFile;
  const keyFile = config.tlsHubbleClientKeyFile || config.tlsClientKeyFile;
  const set = Boolean(certFile || keyFile || config.tlsHubbleServerCaFiles.length > 0);
  if (config.disableClientTls) {
    if (set) throw new ConfigError('relay: --disable-client-tls contradicts --tls-hubble-server-ca-files, --tls-hubble-client-cert-file and --tls-hubble-client-key-file; drop one or the other');
    return undefined;
  }
  return readClientTls({ caFiles: config.tlsHubbleServerCaFiles, certFile, keyFile }, { cert: 'tls-hubble-client-cert-file', key: 'tls-hubble-client-key-file', cas: 'tls-hubble-server-ca-files' });
}

export function registerRelayCommand(program: Command): void {
  const relay = program
    .command('relay')
    .description("Hubble Relay: one Observer API over every agent found in the shared store (flags override CILIATE_* environment variables, which override --config)")
    .option('--config <file>', 'YAML configuration file');
  for (const option of configOptions(relayConfig)) relay.addOption(option);
  relay.action(async (options: Partial<RelayConfig> & { config?: string }) => {
    const { config: file, ...flags } = options;
    await runRelay(loadConfigWith(RelayConfigSchema, { file, env: process.env, flags }));
  });
}
