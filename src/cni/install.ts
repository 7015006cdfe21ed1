/**
 * Installs the plugin where a runtime looks for it: an executable `ciliate` in the CNI bin dir
 * (a wrapper that runs src/cni/main.ts on this checkout's Node 24) and a network config list.
 * @module
 */
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const REPO_ROOT = join(import.meta.dirname, '..', '..');

export interface InstallOptions {
  binDir: string;
  confDir: string;
  /** CNI network name, also the conflist's file name. */
  network?: string;
  socketPath?: string;
  cniVersion?: string;
}

export function installCni(options: InstallOptions): { plugin: string; conflist: string } {
  mkdirSync(options.binDir, { recursive: true });
  mkdirSync(options.confDir, { recursive: true });
  const plugin = join(options.binDir, 'ciliate');
  const node = join(REPO_ROOT, 'node_modules', '.bin', 'node');
  writeFileSync(plugin, `#!/bin/sh\nexec ${JSON.stringify(node)} ${JSON.stringify(join(REPO_ROOT, 'src', 'cni', 'main.ts'))}\n`);
  chmodSync(plugin, 0o755);
  const network = options.network ?? 'ciliate';
  const conflist = join(options.confDir, `10-${network}.conflist`);
  const plugins: Record<string, unknown>[] = [{ type: 'ciliate', ...(options.socketPath ? { socketPath: options.socketPath } : {}) }];
  writeFileSync(conflist, `${JSON.stringify({ cniVersion: options.cniVersion ?? '1.0.0', name: network, plugins }, null, 2)}\n`);
  return { plugin, conflist };
}
