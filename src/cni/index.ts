/**
 * The CNI plugin: spec 1.0 ADD, DEL, CHECK, VERSION and 1.1 STATUS, backed by the agent's API.
 * @module
 */
export { runCni, parseNetConf, readInvocation, resultFor, SUPPORTED_VERSIONS, type CniInvocation, type CniOutput, type NetConf } from './plugin.ts';
export { CniError, CniErrorCode } from './errors.ts';
export { installCni, pluginWrapper, PLUGIN_NODE_FLAGS, type InstallOptions, type InstalledCni } from './install.ts';
