/**
 * The standalone XDP load balancer on the real kernel: a client namespace, the balancer's
 * namespace (XDP on its client-facing veth) and three backend namespaces, each with the VIP on
 * its lo and the decap program on its interface. `ciliate lb` runs as a user runs it; the client
 * connects to VIP:80 and every backend answers (DSR: replies go straight back); a backend whose
 * health server stops gets no new connections and comes back when it is restarted; established
 * connections keep their backend across a reload that changes the backend set; a bad edit of the
 * config is refused and the running config kept; stats and metrics count per VIP and backend.
 * @module
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { execFile } from 'node:child_process';
import { XdpLbDecap, queryLb, type XdpLbStats } from '../src/loadbalancer/index.ts';
import { ROOT, addNetns, inNs, killChild, sleep, spawnInNs } from './support/cluster.ts';

const CLI = join(ROOT, 'src', 'cli', 'main.ts');
const VIP = '10.77.100.1';
const LB_ADDRESS = '10.77.0.1';
const CLIENT_ADDRESS = '10.77.0.2';
const backendAddress = (i: number) => `10.77.${i + 1}.2`;

/** Answers each connection with its name, and each later chunk with its name again. */
const SERVER = `
const net = require('node:net');
const [name, port] = process.argv.slice(1);
net.createServer((s) => { s.write(name + '\\n'); s.on('data', () => s.write(name + '\\n')); s.on('error', () => {}); })
  .listen(Number(port), '0.0.0.0', () => console.log('ready'));
`;

/** many N: N connections one after another, the names that answered; hold K: K connections kept, on each stdin line every one is asked again. */
const CLIENT = `
const net = require('node:net'), readline = require('node:readline');
const [mode, host, port, n] = process.argv.slice(1);
const first = (s) => new Promise((resolve) => {
  const timer = setTimeout(() => resolve('timeout'), 2000);
  s.once('data', (d) => { clearTimeout(timer); resolve(String(d).trim().split('\\n')[0]); });
  s.once('error', (e) => { clearTimeout(timer); resolve(e.code); });
});
(async () => {
  if (mode === 'many') {
    const names = [];
    for (let i = 0; i < Number(n); i++) { const s = net.connect(Number(port), host); names.push(await first(s)); s.destroy(); }
    console.log(JSON.stringify(names));
    return;
  }
  const sockets = Array.from({ length: Number(n) }, () => net.connect(Number(port), host));
  console.log(JSON.stringify(await Promise.all(sockets.map(first))));
  readline.createInterface({ input: process.stdin }).on('line', async () => {
    const answers = sockets.map(first);
    for (const s of sockets) s.write('again\\n');
    console.log(JSON.stringify(await Promise.all(answers)));
  });
})();
`;

const sh = (command: string, args: string[]) =>
  new Promise<string>((resolve, reject) => execFile(command, args, { encoding: 'utf8' }, (error, stdout, stderr) => (error ? reject(new Error(`${command} ${args.join(' ')}: ${stderr || error.message}`)) : resolve(stdout))));

async function serve(t: TestContext, netns: string, name: string, port: number): Promise<ChildProcess> {
  const server = spawnInNs(netns, process.execPath, ['-e', SERVER, name, String(port)]);
  t.after(() => killChild(server));
  await new Promise<void>((resolve, reject) => {
    server.stdout?.once('data', () => resolve());
    server.once('exit', (code) => reject(new Error(`server ${name}:${port} exited with ${code}`)));
  });
  return server;
}

async function connectMany(netns: string, n: number): Promise<string[]> {
  return JSON.parse(await inNs(netns, process.execPath, ['-e', CLIENT, 'many', VIP, '80', String(n)], 60_000)) as string[];
}

function counts(names: readonly string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const name of names) out[name] = (out[name] ?? 0) + 1;
  return out;
}

function config(backends: readonly number[], extra = '', weights: Record<number, number> = {}): string {
  return [
    'interface: l0',
    'xdpMode: generic',
    `source: ${LB_ADDRESS}`,
    'healthCheck: { intervalMs: 200, timeoutMs: 150, fall: 2, rise: 2 }',
    'vips:',
    `  - address: ${VIP}`,
    '    port: 80',
    '    protocol: TCP',
    '    backends:',
    ...backends.map((i) => `      - { address: ${backendAddress(i)}, healthPort: 8081${weights[i] === undefined ? '' : `, weight: ${weights[i]}`} }`),
    extra,
  ].join('\n');
}

async function waitFor<T>(what: string, read: () => Promise<T>, ok: (value: T) => boolean, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let value = await read();
  while (!ok(value)) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: last ${JSON.stringify(value)}`);
    await sleep(100);
    value = await read();
  }
  return value;
}

test('XDP load balancer: Maglev over three backends with IPIP and DSR, health checks, reloads that keep connections, stats', async (t) => {
  const client = await addNetns(t, 'xlbc');
  const lbNs = await addNetns(t, 'xlbl');
  const backends = [await addNetns(t, 'xlb0'), await addNetns(t, 'xlb1'), await addNetns(t, 'xlb2')];
  // Links are made inside the namespaces and die with them.
  await sh('ip', ['link', 'add', 'c0', 'netns', client, 'type', 'veth', 'peer', 'name', 'l0', 'netns', lbNs]);
  await sh('ip', ['-n', client, 'addr', 'add', `${CLIENT_ADDRESS}/24`, 'dev', 'c0']);
  await sh('ip', ['-n', client, 'link', 'set', 'c0', 'up']);
  await sh('ip', ['-n', client, 'route', 'add', 'default', 'via', LB_ADDRESS]);
  await sh('ip', ['-n', lbNs, 'addr', 'add', `${LB_ADDRESS}/24`, 'dev', 'l0']);
  await sh('ip', ['-n', lbNs, 'link', 'set', 'l0', 'up']);
  // The balancer's namespace routes the backends' direct replies to the client (DSR).
  await inNs(lbNs, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
  const servers: ChildProcess[] = [];
  const health: (ChildProcess | undefined)[] = [];
  for (const [i, ns] of backends.entries()) {
    await sh('ip', ['link', 'add', `lb${i}`, 'netns', lbNs, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
    await sh('ip', ['-n', lbNs, 'addr', 'add', `10.77.${i + 1}.1/24`, 'dev', `lb${i}`]);
    await sh('ip', ['-n', lbNs, 'link', 'set', `lb${i}`, 'up']);
    await sh('ip', ['-n', ns, 'addr', 'add', `${backendAddress(i)}/24`, 'dev', 'eth0']);
    await sh('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
    await sh('ip', ['-n', ns, 'addr', 'add', `${VIP}/32`, 'dev', 'lo']);
    await sh('ip', ['-n', ns, 'route', 'add', 'default', 'via', `10.77.${i + 1}.1`]);
    const decap = XdpLbDecap.attach({ netns: `/run/netns/${ns}`, interface: 'eth0', balancers: [LB_ADDRESS] });
    t.after(() => decap.close());
    servers.push(await serve(t, ns, `b${i}`, 80));
    health.push(await serve(t, ns, `h${i}`, 8081));
  }

  const dir = mkdtempSync(join(tmpdir(), 'ciliate-xlb-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'lb.yaml');
  const socket = join(dir, 'lb.sock');
  writeFileSync(file, config([0, 1, 2]));
  const lb = spawnInNs(lbNs, process.execPath, [CLI, 'lb', '--config', file, '--socket', socket]);
  t.after(() => killChild(lb, 'SIGTERM'));
  let lbLog = '';
  lb.stderr?.on('data', (chunk: Buffer) => (lbLog += chunk.toString()));
  await waitFor('ciliate lb to be ready', async () => lbLog, (log) => log.includes('ready') || lb.exitCode !== null, 20_000);
  assert.equal(lb.exitCode, null, `ciliate lb exited: ${lbLog}`);
  const stats = async () => JSON.parse(await queryLb(socket, '/v1/stats')) as XdpLbStats;

  await t.test('every backend takes connections to the VIP, and the replies come back directly', async () => {
    const names = await connectMany(client, 30);
    const seen = counts(names);
    assert.deepEqual(Object.keys(seen).sort(), ['b0', 'b1', 'b2'], `answers: ${JSON.stringify(seen)}`);
  });

  await t.test('stats and metrics count packets per VIP and backend', async () => {
    const out = await new Promise<string>((resolve, reject) => execFile(process.execPath, [CLI, 'lb', 'stats', '--socket', socket, '-o', 'json'], { encoding: 'utf8' }, (e, stdout, stderr) => (e ? reject(new Error(stderr)) : resolve(stdout))));
    const s = JSON.parse(out) as XdpLbStats;
    assert.equal(s.vips.length, 1);
    assert.equal(s.vips[0].vip, `${VIP}:80/TCP`);
    // 30 connections: at least a SYN, an ACK and a FIN each through the balancer.
    assert.ok(s.vips[0].packets >= 90, `VIP packets ${s.vips[0].packets}`);
    for (const b of s.backends) assert.ok(b.packets > 0 && b.bytes > b.packets * 40, `backend ${b.address}: ${b.packets} packets, ${b.bytes} bytes`);
    assert.equal(s.backends.reduce((sum, b) => sum + b.packets, 0), s.vips[0].packets);
    const metrics = await queryLb(socket, '/metrics');
    assert.match(metrics, new RegExp(`ciliate_lb_backend_packets_total\\{backend="${backendAddress(1).replaceAll('.', '\\.')}"\\} [1-9]`));
    assert.match(metrics, /ciliate_lb_vip_packets_total\{vip="10\.77\.100\.1:80\/TCP"\} [1-9]/);
  });

  await t.test('a backend failing its health checks gets no new connections, and comes back', async () => {
    await killChild(health[1]!);
    await waitFor('b1 to be taken out', stats, (s) => s.backends.some((b) => b.address === backendAddress(1) && !b.healthy));
    const names = await connectMany(client, 30);
    assert.equal(counts(names).b1, undefined, `b1 still got connections: ${JSON.stringify(counts(names))}`);
    assert.deepEqual(Object.keys(counts(names)).sort(), ['b0', 'b2']);
    health[1] = await serve(t, backends[1], 'h1', 8081);
    await waitFor('b1 to be back', stats, (s) => s.backends.every((b) => b.healthy));
    assert.deepEqual(Object.keys(counts(await connectMany(client, 30))).sort(), ['b0', 'b1', 'b2']);
  });

  await t.test('established connections keep their backend across a reload that changes the backend set', async () => {
    writeFileSync(file, config([0]));
    await waitFor('the reload to b0 alone', stats, (s) => s.vips[0].backends.length === 1);
    assert.deepEqual(counts(await connectMany(client, 5)), { b0: 5 });
    const holder = spawnInNs(client, process.execPath, ['-e', CLIENT, 'hold', VIP, '80', '8']);
    t.after(() => killChild(holder));
    const lines: string[][] = [];
    holder.stdout?.on('data', (chunk: Buffer) => lines.push(...chunk.toString().trim().split('\n').map((l) => JSON.parse(l) as string[])));
    await waitFor('8 held connections', async () => lines.length, (n) => n >= 1);
    assert.deepEqual(lines[0], Array(8).fill('b0'));
    writeFileSync(file, config([0, 1, 2]));
    await waitFor('the reload to three backends', stats, (s) => s.vips[0].backends.length === 3 && s.vips[0].backends.every((b) => b.inTable));
    // New connections spread again; each held one is still answered by b0 (without the
    // connection table ~2/3 of them would now hash to b1 or b2 and be reset).
    assert.deepEqual(Object.keys(counts(await connectMany(client, 30))).sort(), ['b0', 'b1', 'b2']);
    holder.stdin?.write('again\n');
    await waitFor('the held connections to answer', async () => lines.length, (n) => n >= 2);
    assert.deepEqual(lines[1], Array(8).fill('b0'));
  });

  await t.test('a backend of weight 0 takes no new connections; weight back, it takes its share again', async () => {
    writeFileSync(file, config([0, 1, 2], '', { 2: 0 }));
    await waitFor('b2 out of the table', stats, (s) => s.vips[0].backends.map((b) => b.inTable).join() === 'true,true,false');
    assert.deepEqual(Object.keys(counts(await connectMany(client, 30))).sort(), ['b0', 'b1']);
    writeFileSync(file, config([0, 1, 2]));
    await waitFor('b2 back in the table', stats, (s) => s.vips[0].backends.every((b) => b.inTable));
    assert.deepEqual(Object.keys(counts(await connectMany(client, 30))).sort(), ['b0', 'b1', 'b2']);
  });

  await t.test('a bad edit of the config is refused and the running config kept', async () => {
    writeFileSync(file, config([0, 1, 2], 'bogus: 1').replace('port: 80', 'port: 70000'));
    await waitFor('the refusal', async () => lbLog, (log) => log.includes('reload refused'));
    assert.match(lbLog, /lb\.yaml: vips\.0\.port: .*65535/);
    assert.match(lbLog, /lb\.yaml: \(top\): .*bogus/);
    assert.equal((await stats()).vips[0].backends.length, 3);
    assert.deepEqual(Object.keys(counts(await connectMany(client, 30))).sort(), ['b0', 'b1', 'b2']);
  });
});
