/**
 * The CNI plugin: spec 1.0 ADD, DEL, CHECK, VERSION and 1.1 STATUS. Its logic runs in the agent
 * (behind POST /v1/cni); the binary a runtime executes is src/cni/shim/ciliate-cni.c.
 * @module
 */
export {
  runCni,
  parseNetConf,
  readInvocation,
  resultFor,
  SUPPORTED_VERSIONS,
  CNI_ROUTE,
  CNI_EXIT_HEADER,
  type CniAgent,
  type CniEnv,
  type CniInvocation,
  type CniOutput,
  type NetConf,
} from './plugin.ts';
export { CniError, CniErrorCode } from './errors.ts';
export { installCni, PLUGIN_BINARY, type InstallOptions, type InstalledCni } from './install.ts';
