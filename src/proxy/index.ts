/**
 * The node's L7 proxy: HTTP rules enforced on the connections the datapath redirects to it
 * (bpf/lib/proxy.h), in a supervised child process, with L7 flows reported to the agent.
 *
 * @example
 * const proxy = new ProxySupervisor({ port: L7_PROXY_PORT, log, onRecords: (records) => show(records) });
 * await proxy.start();
 * proxy.setState({ revision: 1, identities: [['10.0.1.5', 300]], policies: [{ address: '10.0.1.9', entries }] });
 * @module
 */
export { ProxySupervisor, type ProxySupervisorOptions, type ProxyStatus } from './supervisor.ts';
export { HttpProxy, proxyIngressMark, type HttpProxyOptions } from './http-proxy.ts';
export type { ProxyState, FromProxy, ToProxy } from './protocol.ts';
export { closeDescriptor, makeDatagramSocketTransparent, makeListenerTransparent, markDatagramSocket, markedTcpSocket, rawIpv4Socket, sendIpv4Packet, SocketOptionError } from './libc.ts';
export { publishListener } from './listeners.ts';
