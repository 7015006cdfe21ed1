/**
 * Cilium's dynamic flow logs: exporters named in a YAML file (`--hubble-flowlogs-config-path`)
 * that the agent watches and applies while it runs, without a restart:
 *
 * ```yaml
 * flowLogs:
 *   - name: drops
 *     filePath: /var/log/ciliate/drops.log
 *     fieldMask: [time, source.pod_name, destination.pod_name, verdict, drop_reason_desc]
 *     includeFilters: [{ verdict: [DROPPED] }]
 *     excludeFilters: [{ source_pod: [kube-system/] }]
 *     end: "2027-01-01T00:00:00Z"   # optional: nothing is exported after it
 *     fileMaxSizeMb: 10             # optional: the agent's hubbleExportFileMaxSizeMb
 *     fileMaxBackups: 5             # optional: the agent's hubbleExportFileMaxBackups
 * ```
 *
 * The file is watched (fs.watch on its directory, since editors replace files by renaming) and
 * also read every few seconds in case a change went unnoticed. A file is applied whole or not
 * at all: one that does not parse, names an unknown filter field or mask path, repeats a name
 * or a path, or names a file that cannot be opened is rejected with the reason in the log and
 * in status, and the exporters in force keep running. Exporters whose settings did not change
 * keep running untouched; a changed one is replaced (its counters start again) and takes over
 * its file, so lines are never written through two handles.
 * @module
 */
import { createHash } from 'node:crypto';
import { watch, type FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname, isAbsolute } from 'node:path';
import type { Logger } from 'pino';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import type { RingEntry } from './buffer.ts';
import { InvalidRequestError } from './errors.ts';
import { compileExport, FlowExporter, type ExporterStats } from './export.ts';
import { flowFilterFromJson } from './flow-schema.ts';
import type { RotatingFile } from './rotating-file.ts';
import type { FlowFilter } from './types.ts';

/** How often the file is read when no watch event came (Cilium's dynamic exporter polls every 5 s). */
export const FLOWLOGS_CHECK_INTERVAL_MS = 5000;

export interface FlowLogConfig {
  name: string;
  filePath: string;
  fieldMask: string[];
  includeFilters: FlowFilter[];
  excludeFilters: FlowFilter[];
  endMs?: number;
  fileMaxSizeMb?: number;
  fileMaxBackups?: number;
}

const flowLogSchema = z
  .object({
    name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/, 'must be letters, digits, _ . or -'),
    filePath: z.string().min(1).refine(isAbsolute, 'must be an absolute path'),
    fieldMask: z.array(z.string()).nullish(),
    includeFilters: z.array(z.unknown()).nullish(),
    excludeFilters: z.array(z.unknown()).nullish(),
    end: z.union([z.string(), z.date()]).nullish(),
    fileMaxSizeMb: z.number().positive().optional(),
    fileMaxBackups: z.number().int().min(0).optional(),
  })
  .strict();
const fileSchema = z.object({ flowLogs: z.array(flowLogSchema).nullish() }).strict();

function configError(field: string, reason: string): never {
  throw new InvalidRequestError('ERR_OBSERVER_FLOWLOGS_CONFIG', field, reason);
}

/**
 * A flow-logs file's exporters, checked whole: structure, filters, masks, `end`, unique names
 * and paths (none of them in `reservedPaths`, the agent's own export file).
 * @throws InvalidRequestError (ERR_OBSERVER_FLOWLOGS_CONFIG, ERR_OBSERVER_INVALID_FILTER, ERR_OBSERVER_INVALID_FIELD_MASK) naming the field, e.g. `flowLogs[1].includeFilters[0].verdict[0]`
 */
export function parseFlowLogsConfig(text: string, reservedPaths: readonly string[] = []): FlowLogConfig[] {
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (error) {
    return configError('(file)', `not valid YAML: ${(error as Error).message}`);
  }
  const parsed = fileSchema.safeParse(raw ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const field = issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`)).join('').replace(/^\./, '') || '(top level)';
    return configError(field, issue.message);
  }
  const names = new Set<string>();
  const paths = new Set(reservedPaths);
  return (parsed.data.flowLogs ?? []).map((entry, i) => {
    const at = `flowLogs[${i}]`;
    if (names.has(entry.name)) configError(`${at}.name`, `${JSON.stringify(entry.name)} is used twice`);
    names.add(entry.name);
    if (paths.has(entry.filePath)) configError(`${at}.filePath`, `${entry.filePath} is written by another exporter`);
    paths.add(entry.filePath);
    const config: FlowLogConfig = {
      name: entry.name,
      filePath: entry.filePath,
      fieldMask: entry.fieldMask ?? [],
      includeFilters: (entry.includeFilters ?? []).map((f, j) => flowFilterFromJson(f, `${at}.includeFilters[${j}]`)),
      excludeFilters: (entry.excludeFilters ?? []).map((f, j) => flowFilterFromJson(f, `${at}.excludeFilters[${j}]`)),
      fileMaxSizeMb: entry.fileMaxSizeMb,
      fileMaxBackups: entry.fileMaxBackups,
    };
    if (entry.end !== undefined && entry.end !== null) {
      const endMs = entry.end instanceof Date ? entry.end.getTime() : Date.parse(entry.end);
      if (Number.isNaN(endMs)) configError(`${at}.end`, `not an RFC 3339 time: ${JSON.stringify(entry.end)}`);
      config.endMs = endMs;
    }
    compileExport({ allowlist: config.includeFilters, denylist: config.excludeFilters, fieldMask: config.fieldMask, fields: { allowlist: `${at}.includeFilters`, denylist: `${at}.excludeFilters`, fieldMask: `${at}.fieldMask` } });
    return config;
  });
}

export interface FlowLogsOptions {
  configPath: string;
  nodeName: string;
  /** Rotation for exporters that set none. */
  defaults: { maxSizeMb: number; maxBackups: number };
  /** Paths no flow log may write (the agent's own export file). */
  reservedPaths: readonly string[];
  checkIntervalMs?: number;
  log: Logger;
}

export interface FlowLogsStatus {
  configPath: string;
  /** sha256 (first 16 hex digits) of the file in force. */
  configHash?: string;
  lastAppliedAt?: string;
  reloads: number;
  /** Why the file on disk is not in force (the exporters listed are the previous ones). */
  lastError?: string;
  lastErrorAt?: string;
  exporters: ExporterStats[];
}

interface Running {
  config: FlowLogConfig;
  key: string;
  exporter: FlowExporter;
}

/**
 * @example
 * const flowLogs = new FlowLogs({ configPath: '/etc/ciliate/flowlogs.yaml', nodeName: 'n1', defaults: { maxSizeMb: 10, maxBackups: 5 }, reservedPaths: [], log });
 * await flowLogs.start();
 * observer.ring.onPush((entry) => flowLogs.offer(entry));
 */
export class FlowLogs {
  readonly #options: FlowLogsOptions;
  #running: Running[] = [];
  /** Hash of the text last read, applied or not: the same bad file is reported once, not every check. */
  #seenHash: string | undefined;
  #appliedHash: string | undefined;
  #appliedAt: string | undefined;
  #reloads = 0;
  #lastError: { message: string; at: string } | undefined;
  #tail: Promise<void> = Promise.resolve();
  #watcher: FSWatcher | undefined;
  #timer: NodeJS.Timeout | undefined;
  #debounce: NodeJS.Timeout | undefined;
  #stopped = false;

  constructor(options: FlowLogsOptions) {
    this.#options = options;
  }

  /** Applies the file as it is now (a bad or missing file is reported, not thrown), then watches it. */
  async start(): Promise<void> {
    await this.reload();
    try {
      this.#watcher = watch(dirname(this.#options.configPath), (_event, name) => {
        if (name !== null && name !== basename(this.#options.configPath)) return;
        clearTimeout(this.#debounce);
        // Editors write a file in several steps; read it once they are done.
        this.#debounce = setTimeout(() => void this.reload(), 50);
      });
      this.#watcher.on('error', (error) => this.#options.log.warn({ err: error, path: this.#options.configPath }, 'watching the flow-logs config failed; checking it periodically'));
    } catch (error) {
      this.#options.log.warn({ err: error, path: this.#options.configPath }, 'cannot watch the flow-logs config directory; checking it periodically');
    }
    this.#timer = setInterval(() => void this.reload(), this.#options.checkIntervalMs ?? FLOWLOGS_CHECK_INTERVAL_MS).unref();
  }

  /** Hands an observer entry to every flow log. */
  offer(entry: RingEntry): void {
    for (const r of this.#running) r.exporter.offer(entry);
  }

  /** Reads the file and applies it if it changed; serialized with other reloads. */
  reload(): Promise<void> {
    const run = this.#tail.then(() => this.#reload());
    this.#tail = run.catch(() => undefined);
    return run;
  }

  async #reload(): Promise<void> {
    if (this.#stopped) return;
    const path = this.#options.configPath;
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (error) {
      this.#reject('unreadable', `reading flow-logs config ${path}: ${(error as Error).message}`);
      return;
    }
    const hash = createHash('sha256').update(text).digest('hex').slice(0, 16);
    if (hash === this.#seenHash) return;
    this.#seenHash = hash;
    let configs: FlowLogConfig[];
    try {
      configs = parseFlowLogsConfig(text, this.#options.reservedPaths);
    } catch (error) {
      this.#reject(hash, `flow-logs config ${path}: ${(error as Error).message}`);
      return;
    }
    const previous = new Map(this.#running.map((r) => [r.config.name, r]));
    const filesByPath = new Map<string, RotatingFile>(this.#running.map((r) => [r.config.filePath, r.exporter.file]));
    const next: Running[] = [];
    const created: FlowExporter[] = [];
    try {
      for (const config of configs) {
        const key = JSON.stringify(config);
        const old = previous.get(config.name);
        if (old && old.key === key) {
          next.push(old);
          continue;
        }
        const exporter = new FlowExporter(
          {
            name: config.name,
            filePath: config.filePath,
            nodeName: this.#options.nodeName,
            allowlist: config.includeFilters,
            denylist: config.excludeFilters,
            fieldMask: config.fieldMask,
            maxSizeBytes: Math.round((config.fileMaxSizeMb ?? this.#options.defaults.maxSizeMb) * 1024 * 1024),
            maxBackups: config.fileMaxBackups ?? this.#options.defaults.maxBackups,
            endMs: config.endMs,
            log: this.#options.log,
          },
          filesByPath.get(config.filePath),
        );
        created.push(exporter);
        await exporter.open();
        next.push({ config, key, exporter });
      }
    } catch (error) {
      const reused = new Set(filesByPath.values());
      await Promise.all(created.map((e) => e.close(!reused.has(e.file))));
      this.#reject(hash, `flow-logs config ${path}: ${(error as Error).message}`);
      return;
    }
    const kept = new Set(next.map((r) => r.exporter));
    const filesInUse = new Set(next.map((r) => r.exporter.file));
    const retired = this.#running.filter((r) => !kept.has(r.exporter));
    this.#running = next;
    await Promise.all(retired.map((r) => r.exporter.close(!filesInUse.has(r.exporter.file))));
    this.#appliedHash = hash;
    this.#appliedAt = new Date().toISOString();
    this.#reloads++;
    this.#lastError = undefined;
    const names = (rs: Running[]) => rs.map((r) => r.config.name);
    this.#options.log.info(
      {
        path,
        hash,
        exporters: names(next),
        added: configs.filter((c) => !previous.has(c.name)).map((c) => c.name),
        changed: next.filter((r) => previous.has(r.config.name) && previous.get(r.config.name) !== r).map((r) => r.config.name),
        removed: names(retired).filter((n) => !next.some((r) => r.config.name === n)),
      },
      'flow-logs config applied',
    );
  }

  #reject(hash: string, message: string): void {
    if (this.#lastError?.message === message) return;
    this.#seenHash = hash;
    this.#lastError = { message, at: new Date().toISOString() };
    this.#options.log.error({ path: this.#options.configPath, exporters: this.#running.map((r) => r.config.name) }, `${message}; the flow logs in force keep running`);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#watcher?.close();
    clearInterval(this.#timer);
    clearTimeout(this.#debounce);
    await this.#tail;
    const running = this.#running;
    this.#running = [];
    await Promise.all(running.map((r) => r.exporter.close()));
  }

  status(): FlowLogsStatus {
    return {
      configPath: this.#options.configPath,
      configHash: this.#appliedHash,
      lastAppliedAt: this.#appliedAt,
      reloads: this.#reloads,
      lastError: this.#lastError?.message,
      lastErrorAt: this.#lastError?.at,
      exporters: this.#running.map((r) => r.exporter.stats()),
    };
  }
}
