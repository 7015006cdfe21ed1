/**
 * The installed plugin binary on its own, without an agent: what it answers itself (VERSION),
 * which socket it talks to, what it prints when nobody answers there or when stdin is too large,
 * and that it never waits forever. Through a real agent: test/cni.test.ts and test/podman.test.ts.
 * @module
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { DEFAULT_SOCKET } from '../agent/client.ts';
import { MAX_REQUEST_BYTES } from '../agent/api-server.ts';
import { installCni } from './install.ts';
import { SUPPORTED_VERSIONS } from './plugin.ts';

interface Run {
  exit: number;
  stdout: string;
  out: Record<string, unknown>;
  ms: number;
}

function runPlugin(plugin: string, env: Record<string, string>, stdin: string | Buffer): Promise<Run> {
  const start = performance.now();
  return new Promise((resolve) => {
    const child = execFile(plugin, [], { env, encoding: 'utf8', timeout: 30_000 }, (error, stdout) => {
      const text = stdout.trim();
      resolve({ exit: error ? Number((error as { code?: number }).code ?? -1) : 0, stdout, out: text ? (JSON.parse(text) as Record<string, unknown>) : {}, ms: performance.now() - start });
    });
    // The plugin may stop reading (a too large stdin): that is its answer, not the test's failure.
    child.stdin?.on('error', () => {});
    child.stdin?.end(stdin);
  });
}

function installed(t: TestContext): { plugin: string; dir: string } {
  const dir = mkdtempSync(join(tmpdir(), 'ciliate-cni-shim-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const { plugin } = installCni({ binDir: join(dir, 'bin'), confDir: join(dir, 'net.d') });
  return { plugin, dir };
}

const conf = (extra: object = {}) => JSON.stringify({ cniVersion: '0.4.0', name: 'n', type: 'ciliate', ...extra });

test('install copies the plugin binary executable and writes the conflist; an earlier Node plugin\'s compile cache goes', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ciliate-cni-install-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const binDir = join(dir, 'bin');
  mkdirSync(join(binDir, '.ciliate-compile-cache'), { recursive: true });
  writeFileSync(join(binDir, 'ciliate'), '#!/bin/sh\nexec node main.ts\n');
  const { plugin, conflist } = installCni({ binDir, confDir: join(dir, 'net.d'), socketPath: '/run/x.sock', network: 'pods' });
  assert.equal(statSync(plugin).mode & 0o777, 0o755);
  assert.equal(readFileSync(plugin).subarray(0, 4).toString('latin1'), '\x7fELF', 'the compiled binary replaced the wrapper script');
  assert.ok(!existsSync(join(binDir, '.ciliate-compile-cache')));
  assert.deepEqual(JSON.parse(readFileSync(conflist, 'utf8')), { cniVersion: '1.0.0', name: 'pods', plugins: [{ type: 'ciliate', socketPath: '/run/x.sock' }] });
});

test('VERSION is answered by the binary itself, with the versions the agent supports', async (t) => {
  const { plugin } = installed(t);
  const version = await runPlugin(plugin, { CNI_COMMAND: 'VERSION', CILIATE_SOCKET_PATH: '/nonexistent/agent.sock' }, conf());
  assert.equal(version.exit, 0);
  assert.deepEqual(version.out, { cniVersion: '0.4.0', supportedVersions: SUPPORTED_VERSIONS });
  assert.equal(version.stdout, `${JSON.stringify(version.out)}\n`, 'one JSON document and a newline');
  // A cniVersion with every kind of escape comes back as the same string; a document that is not JSON, as 1.0.0.
  const odd = 'v"\\/\n\u0001é😀';
  assert.equal((await runPlugin(plugin, { CNI_COMMAND: 'VERSION' }, JSON.stringify({ nested: { cniVersion: 'no' }, cniVersion: odd }))).out.cniVersion, odd);
  assert.equal((await runPlugin(plugin, { CNI_COMMAND: 'VERSION' }, '{ not json')).out.cniVersion, '1.0.0');
  assert.equal((await runPlugin(plugin, { CNI_COMMAND: 'VERSION' }, '')).out.cniVersion, '1.0.0');
});

test('the agent socket: the configuration\'s socketPath, else CILIATE_SOCKET_PATH, else the agent\'s default', async (t) => {
  const { plugin, dir } = installed(t);
  const fromConf = join(dir, 'conf.sock');
  const fromEnv = join(dir, 'env.sock');
  for (const command of ['ADD', 'DEL', 'CHECK']) {
    const run = await runPlugin(plugin, { CNI_COMMAND: command, CNI_CONTAINERID: 'c', CNI_IFNAME: 'eth0', CILIATE_SOCKET_PATH: fromEnv }, conf({ socketPath: fromConf }));
    assert.equal(run.exit, 1);
    assert.deepEqual(run.out, { cniVersion: '0.4.0', code: 11, msg: `cannot reach the agent at ${fromConf}: is \`ciliate agent\` running? (ENOENT)` }, `${command} without an agent: try again later`);
  }
  // JSON's escapes in the path, a socketPath nested deeper (not the plugin's), and the last of duplicate keys.
  const escaped = `{"cniVersion":"1.0.0","args":{"socketPath":"/elsewhere"},"socketPath":"/x","socketPath":"${fromConf.replaceAll('/', '\\/')}"}`;
  assert.match(String((await runPlugin(plugin, { CNI_COMMAND: 'ADD' }, escaped)).out.msg), new RegExp(`at ${fromConf}:`));
  // What JSON.parse takes elsewhere in the document (a lone surrogate, \u0000) does not hide the socketPath.
  const odd = `{"x":"\\ud800\\u0000","y":[1,{"z":null}],"socketPath":"${fromConf}"}`;
  assert.match(String((await runPlugin(plugin, { CNI_COMMAND: 'ADD' }, odd)).out.msg), new RegExp(`at ${fromConf}:`));
  const nul = await runPlugin(plugin, { CNI_COMMAND: 'ADD' }, '{"socketPath":"/run/a\\u0000b"}');
  assert.deepEqual([nul.out.code, nul.out.msg], [7, 'network configuration: field socketPath: holds \\u0000 or a lone surrogate, which no path can']);
  assert.match(String((await runPlugin(plugin, { CNI_COMMAND: 'ADD', CILIATE_SOCKET_PATH: fromEnv }, conf())).out.msg), new RegExp(`at ${fromEnv}:`));
  const status = await runPlugin(plugin, { CNI_COMMAND: 'STATUS', CILIATE_SOCKET_PATH: fromEnv }, conf());
  assert.deepEqual([status.exit, status.out.code], [1, 50], 'STATUS without an agent: plugin not available');
  assert.match(String(status.out.msg), /^STATUS: the Ciliate agent is not available: cannot reach the agent at /);
  // The binary's default is the agent client's: one socket, named twice (C and TypeScript).
  const source = readFileSync(join(import.meta.dirname, 'shim', 'ciliate-cni.c'), 'utf8');
  assert.ok(source.includes(`#define CILIATE_DEFAULT_SOCKET "${DEFAULT_SOCKET}"`), `ciliate-cni.c's default socket is ${DEFAULT_SOCKET}`);

  const relative = await runPlugin(plugin, { CNI_COMMAND: 'ADD' }, conf({ socketPath: 'agent.sock' }));
  assert.deepEqual([relative.out.code, relative.out.msg], [7, 'network configuration: field socketPath: must be an absolute path']);
  const long = await runPlugin(plugin, { CNI_COMMAND: 'ADD' }, conf({ socketPath: `/${'x'.repeat(200)}` }));
  assert.deepEqual([long.out.code, long.out.msg], [7, 'network configuration: field socketPath: must be a path of at most 107 bytes']);
});

test('a stdin over what the agent accepts in one request is refused, not sent', async (t) => {
  const { plugin, dir } = installed(t);
  const huge = Buffer.alloc(MAX_REQUEST_BYTES + 1, ' ');
  const run = await runPlugin(plugin, { CNI_COMMAND: 'ADD', CILIATE_SOCKET_PATH: join(dir, 'none.sock') }, huge);
  assert.deepEqual([run.exit, run.out.code, run.out.msg], [1, 7, `network configuration on stdin is over the ${MAX_REQUEST_BYTES} bytes the agent accepts`]);
  // Under the limit raw but over it once JSON-escaped (every byte a control character: six each).
  const escapedOver = await runPlugin(plugin, { CNI_COMMAND: 'ADD', CILIATE_SOCKET_PATH: join(dir, 'none.sock') }, Buffer.alloc(MAX_REQUEST_BYTES / 4, 1));
  assert.equal(escapedOver.out.code, 7);
  assert.match(String(escapedOver.out.msg), /with the CNI_\* variables is over the 1048576 bytes the agent accepts in a request/);
});

test('an agent that accepts and never answers: the plugin gives up at its deadline with error 11', async (t) => {
  const { plugin, dir } = installed(t);
  const socket = join(dir, 'silent.sock');
  const held: Socket[] = [];
  const server = createServer((connection) => void held.push(connection));
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  t.after(() => {
    for (const connection of held) connection.destroy();
    server.close();
  });
  const run = await runPlugin(plugin, { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c', CILIATE_CNI_TIMEOUT: '1' }, conf({ socketPath: socket }));
  assert.deepEqual([run.exit, run.out.code, run.out.msg], [1, 11, `ADD: the agent at ${socket} did not answer within 1 s`]);
  assert.ok(run.ms < 5000, `gave up after ${Math.round(run.ms)} ms`);
  const bad = await runPlugin(plugin, { CNI_COMMAND: 'ADD', CILIATE_CNI_TIMEOUT: 'soon' }, conf({ socketPath: socket }));
  assert.deepEqual([bad.out.code, bad.out.msg], [4, 'CILIATE_CNI_TIMEOUT "soon" is not a number of seconds from 1 to 3600']);
});
