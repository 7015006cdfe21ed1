/**
 * The agent's modules, in the order they are listed when their needs allow it, and the agent's
 * configuration: the shared settings plus every module's own.
 * @module
 */
import { z } from 'zod';
import { configSchema, coreConfig, loadConfigWith, type ConfigSources } from '../config.ts';
import type { AgentModule } from '../module.ts';
import { apiConfig, apiModule } from './api.ts';
import { clusterModule } from './cluster.ts';
import { endpointDatapathModule, hostNetworkingModule, ipcacheModule, masqueradeConfig, masqueradeModule, nodeRoutingModule } from './datapath.ts';
import { endpointsModule, namespacesModule } from './endpoints.ts';
import { hubbleMetricsConfig, hubbleMetricsModule, metricsConfig, metricsModule } from './metrics.ts';
import { identitiesModule, identityGcConfig, identityGcModule } from './identity.ts';
import { nodeConfig, nodeModule } from './node.ts';
import { observerConfig, observerModule } from './observer.ts';
import { monitorModule, policyConfig, policyModule, policyStatusModule } from './policy.ts';
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
  monitorModule,
  namespacesModule,
  endpointsModule,
  policyStatusModule,
  identityGcModule,
  clusterModule,
  servicesModule,
  hubbleMetricsModule,
  observerModule,
  metricsModule,
  apiModule,
];

/** Every setting of the agent: each field with its default and its --help text. */
export const AgentConfigSchema = configSchema({
  ...coreConfig,
  ...storeConfig,
  ...nodeConfig,
  ...masqueradeConfig,
  ...identityGcConfig,
  ...policyConfig,
  ...servicesConfig,
  ...observerConfig,
  ...apiConfig,
  ...metricsConfig,
  ...hubbleMetricsConfig,
});

export type AgentConfig = z.infer<typeof AgentConfigSchema>;

/** Merges defaults < file < environment < flags into the agent's configuration. */
export function loadConfig(sources: ConfigSources<AgentConfig> = {}): AgentConfig {
  return loadConfigWith(AgentConfigSchema, sources);
}

export { ApiServerCell } from './cells.ts';
