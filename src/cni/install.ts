/**
 * Installs the plugin where a runtime looks for it: an executable `ciliate` in the CNI bin dir
 * (a wrapper that runs src/cni/main.ts on this checkout's Node 24) and a network config list.
 *
 * The runtime starts one plugin process per pod and command, so what the wrapper starts is kept
 * to what a client needs (see the module graph test in src/cni/install.test.ts). On top of that,
 * the wrapper points Node's compile cache (NODE_COMPILE_CACHE) at a directory next to the plugin:
 * without it every invocation strips the TypeScript types of each file again, which loads Node's
 * WebAssembly type stripper and costs about 17 MB of RSS and 40 ms. With it a warm invocation
 * reads the stripped source and V8's code cache instead. Install warms it with one VERSION call.
 * @module
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const REPO_ROOT = join(import.meta.dirname, '..', '..');

/**
 * Flags of the plugin's Node. One V8 worker thread instead of Node's default four (0 would mean
 * "one per core"): a plugin lives for tens of milliseconds and a burst of pods runs many at once,
 * so background compile and GC threads are only more to create and schedule. The compile cache
 * is keyed by V8's flags, so the warm-up call runs through the wrapper itself.
 */
export const PLUGIN_NODE_FLAGS: readonly string[] = ['--v8-pool-size=1'];

export interface InstallOptions {
  binDir: string;
  confDir: string;
  /** CNI network name, also the conflist's file name. */
  network?: string;
  socketPath?: string;
  cniVersion?: string;
  /**
   * The plugin's compile cache. Default: `.ciliate-compile-cache` in binDir. Whoever can write it
   * can change the code the plugin runs as root, so it must be as protected as binDir; it is
   * created 0700.
   */
  compileCacheDir?: string;
}

export interface InstalledCni {
  plugin: string;
  conflist: string;
  compileCacheDir: string;
}

/** The wrapper script: plain sh so the runtime can exec it, with the cache and flags set. */
export function pluginWrapper(node: string, main: string, compileCacheDir: string): string {
  const quote = (value: string): string => `'${value.replaceAll("'", `'\\''`)}'`;
  return [
    '#!/bin/sh',
    '# Ciliate CNI plugin, written by `ciliate cni install`.',
    `NODE_COMPILE_CACHE=${quote(compileCacheDir)} exec ${quote(node)} ${PLUGIN_NODE_FLAGS.join(' ')} ${quote(main)}`,
    '',
  ].join('\n');
}

export function installCni(options: InstallOptions): InstalledCni {
  mkdirSync(options.binDir, { recursive: true });
  mkdirSync(options.confDir, { recursive: true });
  const compileCacheDir = options.compileCacheDir ?? join(options.binDir, '.ciliate-compile-cache');
  mkdirSync(compileCacheDir, { recursive: true, mode: 0o700 });
  const plugin = join(options.binDir, 'ciliate');
  const node = join(REPO_ROOT, 'node_modules', '.bin', 'node');
  // Written under a private name and renamed: a runtime running the plugin meanwhile sees the old
  // wrapper or the new one, never half of one.
  const temp = `${plugin}.${process.pid}.tmp`;
  writeFileSync(temp, pluginWrapper(node, join(REPO_ROOT, 'src', 'cni', 'main.ts'), compileCacheDir), { mode: 0o755 });
  chmodSync(temp, 0o755);
  renameSync(temp, plugin);
  const network = options.network ?? 'ciliate';
  const conflist = join(options.confDir, `10-${network}.conflist`);
  const plugins: Record<string, unknown>[] = [{ type: 'ciliate', ...(options.socketPath ? { socketPath: options.socketPath } : {}) }];
  writeFileSync(conflist, `${JSON.stringify({ cniVersion: options.cniVersion ?? '1.0.0', name: network, plugins }, null, 2)}\n`);
  warmCompileCache(plugin);
  return { plugin, conflist, compileCacheDir };
}

/**
 * Runs the installed plugin once (VERSION loads every module ADD does: the imports are static),
 * so the first pod does not pay for stripping types. A failure here is not an install failure:
 * the plugin still works, only slower on its first run, and its error shows up there.
 */
function warmCompileCache(plugin: string): void {
  try {
    execFileSync(plugin, [], { input: '{"cniVersion":"1.0.0"}', env: { PATH: process.env.PATH ?? '', CNI_COMMAND: 'VERSION' }, stdio: ['pipe', 'ignore', 'ignore'], timeout: 30_000 });
  } catch {
    // See above.
  }
}
