/**
 * Installs the plugin where a runtime looks for it: the compiled plugin binary as `ciliate` in
 * the CNI bin dir, and a network config list.
 *
 * The runtime starts one plugin process per pod and command, so the plugin is a small C program
 * (src/cni/shim/ciliate-cni.c, built by `npm run build`) that forwards the invocation to the
 * agent, where the CNI logic runs: a millisecond and a few hundred kilobytes per run, where a
 * Node process cost 50 ms of CPU and 50 MB.
 * @module
 */
import { copyFileSync, chmodSync, existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CniError, CniErrorCode } from './errors.ts';

/** The plugin binary as `npm run build` (scripts/build-native.sh) leaves it. */
export const PLUGIN_BINARY = join(import.meta.dirname, '..', '..', 'build', 'cni', 'ciliate-cni');

export interface InstallOptions {
  binDir: string;
  confDir: string;
  /** CNI network name, also the conflist's file name. */
  network?: string;
  socketPath?: string;
  cniVersion?: string;
}

export interface InstalledCni {
  plugin: string;
  conflist: string;
}

export function installCni(options: InstallOptions): InstalledCni {
  if (!existsSync(PLUGIN_BINARY)) {
    throw new CniError(CniErrorCode.IO_FAILURE, `the CNI plugin binary ${PLUGIN_BINARY} is not built: run \`npm run build\``);
  }
  mkdirSync(options.binDir, { recursive: true });
  mkdirSync(options.confDir, { recursive: true });
  const plugin = join(options.binDir, 'ciliate');
  // Copied under a private name and renamed: a runtime running the plugin meanwhile runs the old
  // binary or the new one, never half of one (and a running one keeps its own inode).
  const temp = `${plugin}.${process.pid}.tmp`;
  try {
    copyFileSync(PLUGIN_BINARY, temp);
    chmodSync(temp, 0o755);
    renameSync(temp, plugin);
  } finally {
    rmSync(temp, { force: true });
  }
  // What the Node plugin of earlier installs kept next to itself.
  rmSync(join(options.binDir, '.ciliate-compile-cache'), { recursive: true, force: true });
  const network = options.network ?? 'ciliate';
  const conflist = join(options.confDir, `10-${network}.conflist`);
  const plugins: Record<string, unknown>[] = [{ type: 'ciliate', ...(options.socketPath ? { socketPath: options.socketPath } : {}) }];
  writeFileSync(conflist, `${JSON.stringify({ cniVersion: options.cniVersion ?? '1.0.0', name: network, plugins }, null, 2)}\n`);
  return { plugin, conflist };
}
