/**
 * Output helpers shared by CLI commands: the -o option and plain-text tables.
 * @module
 */
import { readFileSync } from 'node:fs';
import { Option } from 'commander';
import { MAX_REQUEST_BYTES } from '../agent/index.ts';

export type OutputFormat = 'table' | 'json';

/** -o table|json, shared by every listing command. */
export function outputOption(): Option {
  return new Option('-o, --output <format>', 'output format').choices(['table', 'json']).default('table');
}

/** Left-aligned columns sized to their widest cell. */
export function formatTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]))).join('  ');
  return [line(header), ...rows.map(line)].join('\n');
}

/** --socket: where the agent's API listens. */
export function socketOption(): Option {
  return new Option('--socket <path>', 'agent API socket').env('CILIATE_SOCKET_PATH').default('/var/run/ciliate/ciliate.sock');
}

/** `value` as JSON (-o json) or as the table `table()` makes. */
export function printOutput(format: OutputFormat, value: unknown, table: () => string): void {
  process.stdout.write(`${format === 'json' ? JSON.stringify(value, null, 2) : table()}\n`);
}

/**
 * A YAML file to send to the agent as `{ yaml, file }`: its text, or a one-line error when it
 * cannot be read or would be over the agent's request limit (said here at once, rather than by
 * the agent after the upload).
 */
export function readYamlRequest(file: string): string {
  let yaml: string;
  try {
    yaml = readFileSync(file, 'utf8');
  } catch (error) {
    throw new Error(`${file}: cannot read: ${(error as Error).message}`);
  }
  const size = Buffer.byteLength(JSON.stringify({ yaml, file }));
  if (size > MAX_REQUEST_BYTES) {
    throw new Error(`${file}: ${size} bytes as a request, over the agent's limit of ${MAX_REQUEST_BYTES} bytes (1 MiB): split it into several files`);
  }
  return yaml;
}
