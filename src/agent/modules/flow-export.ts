/**
 * The observer module's flow export, as Cilium configures Hubble's exporters: one static
 * exporter from the agent's settings (`--hubble-export-file-path` and friends, fixed until the
 * agent restarts) and any number of named ones from a flow-logs file
 * (`--hubble-flowlogs-config-path`) applied while the agent runs.
 * @module
 */
import type { Logger } from 'pino';
import { z } from 'zod';
import { FlowExporter, FlowLogs, ObserverError, parseFlowFilters, type ExporterStats, type FlowLogsStatus, type FlowObserver } from '../../observer/index.ts';
import { ConfigError } from '../config.ts';

export const flowExportConfig = {
  hubbleExportFilePath: z.string().default('').describe("file flows are exported to, one JSON object a line as Hubble's exporter writes them; empty: off (Cilium's hubble-export-file-path)"),
  hubbleExportFileMaxSizeMb: z.number().positive().default(10).describe("MB at which an export file is rotated to <name>-<UTC time>.<ext> (Cilium's hubble-export-file-max-size-mb)"),
  hubbleExportFileMaxBackups: z.number().int().min(0).default(5).describe("rotated export files kept; 0 keeps all (Cilium's hubble-export-file-max-backups)"),
  hubbleExportAllowlist: z.string().default('').describe('FlowFilters as JSON objects (\'{"verdict":["DROPPED"]}\'); a flow is exported when it matches one (Cilium\'s hubble-export-allowlist)'),
  hubbleExportDenylist: z.string().default('').describe("FlowFilters as JSON objects; a flow matching one is not exported (Cilium's hubble-export-denylist)"),
  hubbleExportFieldmask: z.array(z.string()).default([]).describe("Flow fields kept in exported flows, e.g. time,source.identity,verdict; none: all (Cilium's hubble-export-fieldmask)"),
  hubbleFlowlogsConfigPath: z.string().default('').describe("YAML file of named flow logs (flowLogs: [{name, filePath, fieldMask, includeFilters, excludeFilters, end}]), applied on change without a restart (Cilium's hubble-flowlogs-config-path)"),
};

type FlowExportConfig = z.infer<z.ZodObject<typeof flowExportConfig>> & { nodeName: string };

export interface FlowExportStatus {
  exporters: ExporterStats[];
  flowLogs?: FlowLogsStatus;
}

const MB = 1024 * 1024;

/**
 * Starts the configured exporters and feeds them the observer's entries.
 * @throws ConfigError naming the setting (`hubbleExportAllowlist[0].verdict[0]: …`) or the file that cannot be opened
 */
export async function startFlowExport(observer: FlowObserver, config: FlowExportConfig, log: Logger): Promise<{ stop(): Promise<void>; status(): FlowExportStatus }> {
  let exporter: FlowExporter | undefined;
  if (config.hubbleExportFilePath) {
    try {
      exporter = new FlowExporter({
        name: 'static',
        filePath: config.hubbleExportFilePath,
        nodeName: config.nodeName,
        allowlist: parseFlowFilters(config.hubbleExportAllowlist, 'hubbleExportAllowlist'),
        denylist: parseFlowFilters(config.hubbleExportDenylist, 'hubbleExportDenylist'),
        // Cilium's config map spells the mask space-separated; flags and the environment comma-separated.
        fieldMask: config.hubbleExportFieldmask.flatMap((p) => p.split(/[\s,]+/)).filter(Boolean),
        fields: { allowlist: 'hubbleExportAllowlist', denylist: 'hubbleExportDenylist', fieldMask: 'hubbleExportFieldmask' },
        maxSizeBytes: Math.round(config.hubbleExportFileMaxSizeMb * MB),
        maxBackups: config.hubbleExportFileMaxBackups,
        log,
      });
      await exporter.open();
    } catch (error) {
      if (ObserverError.is(error)) throw new ConfigError(`observer: ${error.message}`);
      throw error;
    }
  }
  const flowLogs = config.hubbleFlowlogsConfigPath
    ? new FlowLogs({
        configPath: config.hubbleFlowlogsConfigPath,
        nodeName: config.nodeName,
        defaults: { maxSizeMb: config.hubbleExportFileMaxSizeMb, maxBackups: config.hubbleExportFileMaxBackups },
        reservedPaths: config.hubbleExportFilePath ? [config.hubbleExportFilePath] : [],
        log,
      })
    : undefined;
  await flowLogs?.start();
  const offs = [exporter && observer.ring.onPush((entry) => exporter.offer(entry)), flowLogs && observer.ring.onPush((entry) => flowLogs.offer(entry))];
  if (exporter) log.info({ file: config.hubbleExportFilePath, maxSizeMb: config.hubbleExportFileMaxSizeMb, maxBackups: config.hubbleExportFileMaxBackups }, 'exporting flows');
  return {
    async stop() {
      for (const off of offs) off?.();
      await Promise.all([exporter?.close(), flowLogs?.stop()]);
    },
    status: () => ({ exporters: exporter ? [exporter.stats()] : [], flowLogs: flowLogs?.status() }),
  };
}
