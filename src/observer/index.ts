/**
 * Flow observability compatible with Hubble: datapath events become Hubble flows named by
 * workloads, kept in a bounded buffer with every loss counted, filtered as `hubble observe`
 * asks, served over Hubble's gRPC Observer API and exported to rotating JSON-lines files as
 * Hubble's exporter writes them; plus the printers of `ciliate observe`.
 * @module
 */
export * from './types.ts';
export { ObserverError, InvalidRequestError, type ObserverErrorCode } from './errors.ts';
export { type FlowEntry, type FlowNames, type FlowEndpointInfo } from './flow.ts';
export { L7FlowEntry, L7RecordFanout, l7DnsFlow, l7HttpFlow, type L7DnsRecord, type L7HttpRecord, type L7Record } from './l7.ts';
export { FlowRing, type RingEntry } from './buffer.ts';
export { compileFilter, compileFilters, parseLabelSelector, type FlowPredicate } from './filter.ts';
export { FlowObserver, parseFlowsRequest, type FlowObserverOptions, type FlowQuery, type LostCounts, type ObserverStats, type RecordSource } from './observer.ts';
export { ObserverGrpcServer, ObserverServer, type ObserverBackend, type ObserverNamespace, type ObserverServerOptions } from './server.ts';
export { readClientTls, readServerTls, type ClientTlsMaterial, type ObserverTls, type ServerTlsMaterial, type TlsSettingNames } from './tls.ts';
export { checkHealth, connectObserver, GrpcStatus, PROTO_DIR, type FlowStream, type ObserverClient, type ObserverClientOptions, type ObserverNode } from './proto.ts';
export { FieldMask, flowFilterFromJson, parseFlowFilters } from './flow-schema.ts';
export { RotatingFile, type RotationLimits } from './rotating-file.ts';
export { compileExport, EXPORT_QUEUE_SIZE, FlowExporter, type CompiledExport, type ExporterStats, type FlowExporterOptions } from './export.ts';
export { FLOWLOGS_CHECK_INTERVAL_MS, FlowLogs, parseFlowLogsConfig, type FlowLogConfig, type FlowLogsOptions, type FlowLogsStatus } from './flowlogs.ts';
export { OUTPUT_FORMATS, compactLine, dnsSummary, dictBlock, flowSummary, flowType, responseJson, stampMilli, tableRow, TABLE_HEADER, type FlowOutput, type PrintOptions } from './printer.ts';
export { HUBBLE_PEERS_PREFIX, bindAddress, peerNameOfKey, peerStoreKey, publishedAddress, type HubblePeerRecord } from './peers.ts';
export { Relay, type RelayOptions } from './relay.ts';
