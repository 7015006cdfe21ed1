/**
 * `ciliate relay`: Hubble Relay. It finds the agents through the shared store the agents use
 * (the same store flags as `ciliate agent`) and serves one Observer API over all of them.
 * @module
 */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { z } from 'zod';
import { AgentConfigSchema, ConfigError, VERSION, configSchema, createLogger, etcdStoreOptions, loadConfigWith, storeConfig } from '../agent/index.ts';
import { listenAddressSetting } from '../metrics/index.ts';
import { ObserverGrpcServer, Relay, bindAddress } from '../observer/index.ts';
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
  tlsHubbleServerCaFiles: z.array(z.string()).default([]).describe('CAs (PEM) that signed the agents\' Observer API certificates, comma-separated (for agents publishing TLS)'),
  tlsClientCertFile: z.string().default('').describe('client certificate (PEM) presented to agents that ask for one'),
  tlsClientKeyFile: z.string().default('').describe('private key (PEM) of --tls-client-cert-file'),
  logLevel: AgentConfigSchema.shape.logLevel,
};

const RelayConfigSchema = configSchema(relayConfig);
export type RelayConfig = z.infer<typeof RelayConfigSchema>;

/** Runs the relay until SIGTERM or SIGINT. */
export async function runRelay(config: RelayConfig): Promise<void> {
  // The embedded store is one agent's, locked by it: a relay can only share etcd.
  if (config.store !== 'etcd') throw new ConfigError('relay: the agents must share a store the relay can read: --store etcd with --etcd-endpoints or --etcd-config');
  if (!config.listenAddress && !config.relaySocketPath) throw new ConfigError('relay: nothing to serve on: set --listen-address or --relay-socket-path');
  if (Boolean(config.tlsClientCertFile) !== Boolean(config.tlsClientKeyFile)) throw new ConfigError('relay: --tls-client-cert-file and --tls-client-key-file go together');
  const log = createLogger(config.logLevel, 'relay');
  const store = await EtcdStateStore.connect(await etcdStoreOptions({ ...config, stateDir: '' }));
  const read = (file: string) => (file ? readFileSync(file) : undefined);
  const relay = new Relay({
    store,
    log,
    version: VERSION,
    checkIntervalMs: config.checkInterval,
    callTimeoutMs: config.dialTimeout,
    sortWindowMs: config.sortBufferDrainTimeout,
    sortBufferLength: config.sortBufferLenMax,
    tls: {
      tlsCa: config.tlsHubbleServerCaFiles.length > 0 ? Buffer.concat(config.tlsHubbleServerCaFiles.map((f) => readFileSync(f))) : undefined,
      tlsCert: read(config.tlsClientCertFile),
      tlsKey: read(config.tlsClientKeyFile),
    },
  });
  const server = new ObserverGrpcServer(relay);
  try {
    await relay.start();
    if (config.relaySocketPath) await server.listenUnix(config.relaySocketPath);
    const port = config.listenAddress ? await server.listenTcp(bindAddress(config.listenAddress)) : undefined;
    log.info({ address: config.listenAddress || undefined, port, socket: config.relaySocketPath || undefined }, 'relay: Observer API listening');
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
