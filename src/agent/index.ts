/**
 * The node agent: configuration, lifecycle, endpoint management and the local API, plus the
 * client the CLI and the CNI plugin use to talk to it.
 * @module
 */
export { Agent, VERSION, HOST_DEVICE, type EndpointView, type NodeRecord } from './agent.ts';
export { AgentConfigSchema, ConfigError, loadConfig, envName, type AgentConfig, type ConfigSources } from './config.ts';
export { AgentClient, AgentApiError, DEFAULT_SOCKET } from './client.ts';
export { runAgent, createLogger } from './run.ts';
export type { Endpoint } from './endpoint.ts';
export type { NodeDeregistration } from './node-deregister.ts';
export type { AddEndpointRequest } from './endpoint-manager.ts';
export { reconcilerStatus, type ReconcilerModuleHealth, type ReconcilerStatus } from './reconciler-status.ts';
