/**
 * Prometheus metrics: the agent's (Cilium's names, `cilium_`, read from their sources when
 * scraped) and Hubble's flow metrics (`hubble_`, counted per flow the observer hands over),
 * each on its own `/metrics` server, as Cilium serves them on 9962 and 9965.
 *
 * prom-client is the registry and text encoder; nothing outside this directory imports it.
 * @module
 */
export { Registry } from 'prom-client';
export * from './errors.ts';
export * from './listen-address.ts';
export * from './server.ts';
export * from './map-pressure.ts';
export * from './agent-metrics.ts';
export * from './hubble-options.ts';
export * from './hubble.ts';
export * from './tetragon.ts';
