/**
 * The node agent: configuration, modules, endpoint management and the local API, plus the
 * client the CLI uses to talk to it.
 * @module
 */
export { Agent, type AgentState } from './agent.ts';
export { VERSION } from './version.ts';
export { HOST_DEVICE } from '../datapath/index.ts';
export type { EndpointView } from './modules/endpoints.ts';
export type { NodeRecord } from './node.ts';
export { AGENT_MODULES, AgentConfigSchema, RUNTIME_ONLY_MODULES, loadConfig, type AgentConfig } from './modules/index.ts';
export { ConfigError, configSchema, envName, innerSchema, loadConfigWith, type ConfigSources } from './config.ts';
export { etcdStoreOptions, storeConfig } from './modules/store.ts';
export { defineModule, orderModules, ModuleError, type AgentModule, type ModuleHealth } from './module.ts';
export { AgentClient, AgentApiError, DEFAULT_SOCKET } from './client.ts';
export { MAX_REQUEST_BYTES } from './api-server.ts';
export { runAgent, createLogger } from './run.ts';
export type { Endpoint, EndpointContainer, EndpointWorkload } from './endpoint.ts';
export type { NodeDeregistration } from './node-deregister.ts';
export type { ImportResult } from './policy-manager.ts';
export type { AddEndpointRequest } from './endpoint-manager.ts';
export type { ReconcilerModuleHealth, ReconcilerStatus } from './reconciler-status.ts';
