/**
 * The installed plugin costs what a client should: a runtime starts it once per pod and command,
 * so it must not load the agent (datapath, eBPF, store, policy, pino, koffi, zod …) nor strip
 * TypeScript types again on every run.
 * @module
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { installCni } from './install.ts';

const REPO_ROOT = join(import.meta.dirname, '..', '..');

/**
 * The project files a plugin run may load: its entry, the CNI logic and the agent's light client,
 * and the coded-error base those errors derive from on main (src/errors/index.ts imports nothing).
 */
const ALLOWED_FILES = new Set(['src/cni/main.ts', 'src/cni/plugin.ts', 'src/cni/errors.ts', 'src/agent/client.ts', 'src/agent/unix-http.ts', 'src/errors/index.ts']);
/** Builtins it may import; node:http in particular costs a short-lived process about 16 MB. */
const ALLOWED_BUILTINS = new Set(['node:fs', 'node:net']);
/** What the plugin stays comfortably under with a warm compile cache (about 50 MB on Node 24, of which bare Node is 43). */
const MAX_RSS_MB = 60;

/**
 * Preloaded with --import (through NODE_OPTIONS, so the installed wrapper runs unchanged): records
 * every module the loader is asked for, the builtins Node loaded internally and the peak RSS.
 */
const RECORDER = `
import { registerHooks } from 'node:module';
import { writeFileSync } from 'node:fs';
const urls = [];
registerHooks({ load(url, context, next) { urls.push(url); return next(url, context); } });
process.on('exit', () => writeFileSync(process.env.CILIATE_TEST_RECORD, JSON.stringify({
  urls, builtins: process.moduleLoadList, maxRssKb: process.resourceUsage().maxRSS,
})));
`;

interface Recorded {
  urls: string[];
  builtins: string[];
  maxRssKb: number;
}

function runInstalled(plugin: string, dir: string, env: Record<string, string>, stdin: string): Promise<{ stdout: string; recorded: Recorded }> {
  const record = join(dir, `record-${env.CNI_COMMAND}.json`);
  const recorder = join(dir, 'recorder.mjs');
  writeFileSync(recorder, RECORDER);
  return new Promise((resolve, reject) => {
    const child = execFile(
      plugin,
      [],
      { env: { PATH: process.env.PATH ?? '', NODE_OPTIONS: `--import=${pathToFileURL(recorder).href}`, CILIATE_TEST_RECORD: record, ...env }, encoding: 'utf8' },
      (error, stdout, stderr) => {
        try {
          resolve({ stdout, recorded: JSON.parse(readFileSync(record, 'utf8')) as Recorded });
        } catch (cause) {
          reject(new Error(`plugin ${env.CNI_COMMAND} left no record (${error?.message ?? 'exit 0'}): ${stderr}`, { cause }));
        }
      },
    );
    child.stdin?.end(stdin);
  });
}

test('the installed plugin loads only its own files, the light agent client and node:fs/net, from a warm compile cache', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ciliate-cni-graph-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const { plugin, compileCacheDir } = installCni({ binDir: join(dir, 'bin'), confDir: join(dir, 'net.d'), socketPath: join(dir, 'no-agent.sock') });
  assert.ok(readdirSync(compileCacheDir).length > 0, `install warmed the compile cache in ${compileCacheDir}`);
  const conf = JSON.stringify({ cniVersion: '1.0.0', name: 'graph', type: 'ciliate', socketPath: join(dir, 'no-agent.sock') });

  // VERSION answers without the agent; STATUS goes through the client to a socket nobody listens on.
  for (const command of ['VERSION', 'STATUS']) {
    const { stdout, recorded } = await runInstalled(plugin, dir, { CNI_COMMAND: command }, conf);
    if (command === 'VERSION') assert.match(stdout, /supportedVersions/);
    else assert.match(stdout, /"code":50/, `STATUS without an agent is PLUGIN_NOT_AVAILABLE: ${stdout}`);

    const files = recorded.urls.filter((url) => url.startsWith('file:')).map((url) => relative(REPO_ROOT, fileURLToPath(url)));
    const foreign = files.filter((file) => !ALLOWED_FILES.has(file) && !file.endsWith('recorder.mjs'));
    assert.deepEqual(foreign, [], `${command} loaded more than a client needs (the agent? src/ebpf, src/datapath, zod, pino, koffi?)`);
    assert.ok(files.includes('src/cni/plugin.ts'), `${command}: the recorder saw the plugin load (${files.join(', ')})`);
    const builtins = recorded.urls.filter((url) => url.startsWith('node:') && !ALLOWED_BUILTINS.has(url));
    assert.deepEqual(builtins, [], `${command} imported builtins a client does not need`);
    assert.ok(!recorded.builtins.includes('NativeModule http'), `${command} loaded node:http (a stream-only dependency of the client)`);
    assert.ok(!recorded.builtins.includes('NativeModule internal/deps/amaro/dist/index'), `${command} stripped TypeScript types again instead of reading the compile cache`);
    const rssMb = recorded.maxRssKb / 1024;
    assert.ok(rssMb < MAX_RSS_MB, `${command} peaked at ${rssMb.toFixed(1)} MB RSS, over ${MAX_RSS_MB} MB`);
  }
});
