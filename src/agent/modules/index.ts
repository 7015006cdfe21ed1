/**
 * The agent's modules, in the order they are listed when their needs allow it, and the agent's
 * configuration: the shared settings plus every module's own.
 * @module
 */
import { z } from 'zod';
import { configSchema, coreConfig, loadConfigWith, type ConfigSources } from '../config.ts';
import type { AgentModule } from '../module.ts';
import { apiConfig, apiModule } from './api.ts';
import { clusterModule, nodeHealthConfig, nodeHealthModule } from './cluster.ts';
import { cniModule } from './cni.ts';
import { endpointDatapathConfig, endpointDatapathModule, hostNetworkingModule, ipcacheModule, masqueradeConfig, masqueradeModule, nodeRoutingModule } from './datapath.ts';
import { dnsProxyConfig, dnsProxyModule, dnsRedirectConfig, dnsRedirectModule } from './dns-proxy.ts';
import { endpointsConfig, endpointsModule, namespacesModule } from './endpoints.ts';
import { hubbleMetricsConfig, hubbleMetricsModule, metricsConfig, metricsModule } from './metrics.ts';
import { identitiesModule, identityGcConfig, identityGcModule } from './identity.ts';
import { nodeConfig, nodeModule } from './node.ts';
import { observerConfig, observerModule } from './observer.ts';
import { monitorConfig, monitorModule, policyConfig, policyModule, policyStatusModule } from './policy.ts';
import { runtimeConfig, runtimeDestinationsModule, runtimeModule, runtimePodsModule } from './runtime.ts';
import { proxyConfig, proxyModule } from './proxy.ts';
import { servicesConfig, servicesModule } from './services.ts';
import { storeConfig, storeModule } from './store.ts';

export const AGENT_MODULES: readonly AgentModule[] = [
  storeModule,
  nodeModule,
  identitiesModule,
  hostNetworkingModule,
  masqueradeModule,
  endpointDatapathModule,
  nodeRoutingModule,
  ipcacheModule,
  policyModule,
  dnsProxyModule,
  monitorModule,
  namespacesModule,
  endpointsModule,
  dnsRedirectModule,
  cniModule,
  policyStatusModule,
  identityGcModule,
  clusterModule,
  nodeHealthModule,
  servicesModule,
  hubbleMetricsModule,
  proxyModule,
  observerModule,
  metricsModule,
  runtimeModule,
  runtimePodsModule,
  runtimeDestinationsModule,
  apiModule,
];

/**
 * `ciliate agent --runtime-only`: Tetragon's job alone on a plain host (no store, no datapath),
 * with the local API for `ciliate status`.
 */
export const RUNTIME_ONLY_MODULES: readonly AgentModule[] = [runtimeModule, apiModule];

/** Every setting of the agent: each field with its default and its --help text. */
export const AgentConfigSchema = configSchema({
  ...coreConfig,
  ...storeConfig,
  ...nodeConfig,
  ...masqueradeConfig,
  ...endpointDatapathConfig,
  ...identityGcConfig,
  ...nodeHealthConfig,
  ...policyConfig,
  ...dnsProxyConfig,
  ...dnsRedirectConfig,
  ...monitorConfig,
  ...endpointsConfig,
  ...servicesConfig,
  ...proxyConfig,
  ...observerConfig,
  ...apiConfig,
  ...metricsConfig,
  ...hubbleMetricsConfig,
  ...runtimeConfig,
});

export type AgentConfig = z.infer<typeof AgentConfigSchema>;

/** Merges defaults < file < environment < flags into the agent's configuration. */
export function loadConfig(sources: ConfigSources<AgentConfig> = {}): AgentConfig {
  return loadConfigWith(AgentConfigSchema, sources);
}

export { ApiServerCell } from './cells.ts';
export { RuntimeCell } from './runtime.ts';
