/**
 * The `ciliate` CLI as a user runs it: a separate `node src/cli/main.ts …` process pointed at a
 * real agent with --socket, in table form and with -o json. Assertions are about what the output
 * says (the pods' addresses and identities, the node's name and CIDR, the kernel's map entries),
 * checked against what the agent answered when the pods were created.
 * @module
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Endpoint, NodeRecord } from '../src/agent/index.ts';
import { Addr, Prefix } from '../src/net/index.ts';
import { ROOT, TestNode, echo, echoServer, ping, uniqueName } from './support/cluster.ts';

const CLI = join(ROOT, 'src', 'cli', 'main.ts');

interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

function cli(socket: string, ...args: string[]): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args, '--socket', socket], { encoding: 'utf8', timeout: 30_000 }, (error, stdout, stderr) => {
      resolve({ code: error ? Number((error as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

/** Runs the CLI and insists it succeeded, so a failure shows its stderr. */
async function ok(socket: string, ...args: string[]): Promise<string> {
  const result = await cli(socket, ...args);
  assert.equal(result.code, 0, `ciliate ${args.join(' ')} exited ${result.code}: ${result.stderr}`);
  assert.equal(result.stderr, '', `ciliate ${args.join(' ')} wrote to stderr`);
  return result.stdout;
}

async function json<T>(socket: string, ...args: string[]): Promise<T> {
  return JSON.parse(await ok(socket, ...args, '-o', 'json')) as T;
}

/**
 * Reads a table the way a user's eyes do: columns start where their header starts (headers are
 * separated by two or more spaces, and may hold single spaces, like NODE IP).
 */
function parseTable(text: string): Record<string, string>[] {
  const [header, ...rows] = text.trimEnd().split('\n');
  const columns = [...header.matchAll(/\S+(?: \S+)*/g)].map((m) => ({ name: m[0], start: m.index }));
  assert.ok(columns.length > 1, `a table header: ${header}`);
  return rows.map((row) =>
    Object.fromEntries(columns.map((c, i) => [c.name, row.slice(c.start, columns[i + 1]?.start ?? row.length).trim()])),
  );
}

test('ciliate status, endpoint, node and bpf listings show the running node, its pods and the kernel maps', async (t) => {
  const nodeName = uniqueName('cli');
  const node = await TestNode.start(t, { nodeName, nodeIp: '192.0.2.7' });
  const a = await node.addPod(t, uniqueName('ctr-a'), { app: 'cli-a' });
  const b = await node.addPod(t, uniqueName('ctr-b'), { app: 'cli-b' });
  const pods = [a.endpoint, b.endpoint];
  assert.notEqual(a.endpoint.identity, b.endpoint.identity, 'different labels, different identities');
  // Traffic a → b, so that conntrack has a connection to show.
  await echoServer(t, b.netns, 7100);
  assert.ok(await echo(a.netns, 'tcp', b.endpoint.ipv4, 7100), 'a → b TCP');
  assert.ok(await ping(a.netns, b.endpoint.ipv4), 'a → b ICMP');
  const socket = node.socket;

  await t.test('status', async () => {
    const status = await json<{ node: string; endpoints: number; routingMode: string; ipam: { podCidr: string; routerIp: string; used: number }; datapath: { bpfRoot: string; failures: unknown[] } }>(socket, 'status');
    assert.equal(status.node, nodeName);
    assert.equal(status.endpoints, 2);
    assert.equal(status.routingMode, 'tunnel');
    assert.equal(status.datapath.bpfRoot, node.bpfRoot);
    assert.deepEqual(status.datapath.failures, []);
    assert.match(status.ipam.podCidr, /^10\.\d+\.\d+\.0\/24$/);
    for (const ep of pods) assert.ok(Prefix.parse(status.ipam.podCidr).contains(Addr.parse(ep.ipv4)), `${ep.ipv4} in ${status.ipam.podCidr}`);

    const text = await ok(socket, 'status');
    const field = (name: string) => new RegExp(`^${name}: +(.*)$`, 'm').exec(text)?.[1];
    assert.equal(field('node'), nodeName);
    assert.equal(field('endpoints'), '2');
    assert.equal(JSON.parse(field('ipam') ?? 'null').podCidr, status.ipam.podCidr);
    assert.equal(JSON.parse(field('ipam') ?? 'null').routerIp, status.ipam.routerIp);

    // Every module that writes the kernel reports its reconcilers, and none of them fails here.
    const health = await json<{ state: string; reasons: string[]; reconcilers: { module: string; name: string; degraded: boolean; errors: number }[] }>(socket, 'status');
    assert.equal(health.state, 'ok', `reasons: ${health.reasons.join('; ')}`);
    assert.deepEqual(health.reasons, []);
    assert.deepEqual(
      health.reconcilers.map((r) => `${r.module}/${r.name}`).sort(),
      ['endpoints/endpoint-datapath', 'endpoints/endpoint-link-pool', 'ipcache/ipcache', 'masquerade/masquerade', 'node-routing/routes', 'node-routing/tunnel', 'policy/endpoint-policy', 'services/lb-maps', 'services/sock-endpoints'],
    );
    assert.ok(health.reconcilers.every((r) => !r.degraded && r.errors === 0));
    assert.equal(field('state'), 'ok');
    const table = text.slice(text.indexOf('reconcilers:'));
    assert.match(table, /^MODULE +RECONCILER +STATE +DESIRED +PENDING +ERRORS +REPAIRS +PRUNES/m);
    assert.match(table, /^policy +endpoint-policy +ok +2 +0 +0 /m, 'the two pods\' policy maps, nothing pending');
  });

  await t.test('endpoint list', async () => {
    const listed = await json<Endpoint[]>(socket, 'endpoint', 'list');
    assert.deepEqual(
      listed.map((ep) => [ep.id, ep.ipv4, ep.identity, ep.hostIfname, ep.labels]).sort(),
      pods.map((ep) => [ep.id, ep.ipv4, ep.identity, ep.hostIfname, ep.labels]).sort(),
    );

    const rows = parseTable(await ok(socket, 'endpoint', 'list'));
    assert.deepEqual(
      rows.map((r) => [r.ID, r.IDENTITY, r.IPV4, r.INTERFACE, r.CONTAINER]).sort(),
      pods.map((ep) => [String(ep.id), String(ep.identity), ep.ipv4, ep.hostIfname, ep.containerId.slice(0, 12)]).sort(),
    );
  });

  await t.test('endpoint get, by id and by container id', async () => {
    const got = await json<Endpoint & { datapath: { state: string } }>(socket, 'endpoint', 'get', String(b.endpoint.id));
    assert.equal(got.ipv4, b.endpoint.ipv4);
    assert.equal(got.identity, b.endpoint.identity);
    assert.equal(got.containerId, b.endpoint.containerId);
    assert.deepEqual(got.labels, { app: 'cli-b' });
    assert.equal(got.datapath.state, 'done', 'the datapath realized it');

    const byContainer = await json<Endpoint>(socket, 'endpoint', 'get', a.endpoint.containerId);
    assert.equal(byContainer.id, a.endpoint.id);

    const fields = Object.fromEntries(parseTable(await ok(socket, 'endpoint', 'get', String(a.endpoint.id))).map((r) => [r.FIELD, r.VALUE]));
    assert.equal(fields.id, String(a.endpoint.id));
    assert.equal(fields.ipv4, a.endpoint.ipv4);
    assert.equal(fields.identity, String(a.endpoint.identity));
    assert.equal(fields.hostIfname, a.endpoint.hostIfname);
    assert.deepEqual(JSON.parse(fields.labels), { app: 'cli-a' });
  });

  await t.test('an unknown endpoint is a clear error and a non-zero exit', async () => {
    for (const output of ['table', 'json']) {
      const missing = await cli(socket, 'endpoint', 'get', '4000', '-o', output);
      assert.equal(missing.code, 1, `-o ${output}`);
      assert.equal(missing.stdout, '', 'nothing on stdout');
      assert.equal(missing.stderr, 'ciliate: no endpoint 4000\n');
    }
    const noContainer = await cli(socket, 'endpoint', 'get', 'no-such-container');
    assert.equal(noContainer.code, 1);
    assert.equal(noContainer.stderr, 'ciliate: no endpoint no-such-container\n');
  });

  await t.test('node list', async () => {
    const status = await json<{ ipam: { podCidr: string; routerIp: string } }>(socket, 'status');
    const nodes = await json<NodeRecord[]>(socket, 'node', 'list');
    assert.equal(nodes.length, 1);
    assert.equal(nodes[0].name, nodeName);
    assert.equal(nodes[0].nodeIp, '192.0.2.7');
    assert.equal(nodes[0].podCidr, status.ipam.podCidr);
    assert.equal(nodes[0].routerIp, status.ipam.routerIp);

    assert.deepEqual(parseTable(await ok(socket, 'node', 'list')), [
      { NAME: nodeName, 'NODE IP': '192.0.2.7', 'POD CIDR': status.ipam.podCidr, ROUTER: status.ipam.routerIp, ROUTING: 'tunnel', VERSION: nodes[0].agentVersion },
    ]);
  });

  await t.test('bpf endpoint list', async () => {
    const entries = await json<{ key: { ip: string }; value: { lxc_id: number; sec_identity: number; mac: string } }[]>(socket, 'bpf', 'endpoint', 'list');
    for (const ep of pods) {
      const entry = entries.find((e) => e.key.ip === ep.ipv4);
      assert.ok(entry, `${ep.ipv4} in the endpoint map`);
      assert.equal(entry.value.lxc_id, ep.id);
      assert.equal(entry.value.sec_identity, ep.identity);
      assert.equal(entry.value.mac, ep.mac);
    }
    const rows = parseTable(await ok(socket, 'bpf', 'endpoint', 'list'));
    for (const ep of pods) {
      assert.ok(rows.some((r) => r.IP === ep.ipv4 && r.LXC_ID === String(ep.id) && r.SEC_IDENTITY === String(ep.identity)), `table row for ${ep.ipv4}`);
    }
  });

  await t.test('bpf ipcache list', async () => {
    const entries = await json<{ key: { ip: string; prefixlen: number }; value: { sec_identity: number } }[]>(socket, 'bpf', 'ipcache', 'list');
    for (const ep of pods) {
      const entry = entries.find((e) => e.key.ip === ep.ipv4 && e.key.prefixlen === 32);
      assert.ok(entry, `${ep.ipv4}/32 in the ipcache`);
      assert.equal(entry.value.sec_identity, ep.identity);
    }
    const rows = parseTable(await ok(socket, 'bpf', 'ipcache', 'list'));
    for (const ep of pods) {
      assert.ok(rows.some((r) => r.IP === ep.ipv4 && r.PREFIXLEN === '32' && r.SEC_IDENTITY === String(ep.identity)), `table row for ${ep.ipv4}/32`);
    }
  });

  await t.test('bpf ct list', async () => {
    const entries = await json<{ key: { saddr: string; daddr: string; dport: number; nexthdr: number }; value: { packets: number; src_sec_id: number } }[]>(socket, 'bpf', 'ct', 'list');
    const tcp = entries.filter((e) => e.key.saddr === a.endpoint.ipv4 && e.key.daddr === b.endpoint.ipv4 && e.key.dport === 7100 && e.key.nexthdr === 6);
    assert.ok(tcp.length > 0, `the a → b:7100 TCP connection is in conntrack: ${JSON.stringify(entries)}`);
    assert.ok(tcp.every((e) => e.value.packets > 0), 'with its packets counted');
    assert.ok(tcp.some((e) => e.value.src_sec_id === a.endpoint.identity), 'and the source identity');
    assert.ok(entries.some((e) => e.key.saddr === a.endpoint.ipv4 && e.key.daddr === b.endpoint.ipv4 && e.key.nexthdr === 1), 'the ping too');

    const rows = parseTable(await ok(socket, 'bpf', 'ct', 'list'));
    assert.ok(
      rows.some((r) => r.SADDR === a.endpoint.ipv4 && r.DADDR === b.endpoint.ipv4 && r.DPORT === '7100' && r.NEXTHDR === '6' && Number(r.PACKETS) > 0),
      `a table row for the connection:\n${rows.map((r) => JSON.stringify(r)).join('\n')}`,
    );
  });
});

test('after setup, ciliate is a command on the PATH with bash completion of its subcommands and flags', async () => {
  const run = promisify(execFile);
  const help = await run('ciliate', ['--help']);
  assert.match(help.stdout, /^Usage: ciliate /);
  const script = await run('ciliate', ['completion', 'bash']);
  const complete = async (...words: string[]) =>
    (await run('bash', ['-c', `${script.stdout}\nCOMP_WORDS=(${words.map((w) => JSON.stringify(w)).join(' ')}); COMP_CWORD=${words.length - 1}; _ciliate; echo "\${COMPREPLY[@]}"`])).stdout.trim();
  assert.equal(await complete('ciliate', 'obs'), 'observe');
  assert.match(await complete('ciliate', 'policy', ''), /\bimport\b.*\btrace\b/);
  assert.equal(await complete('ciliate', 'observe', '--verdict', 'DROPPED', '--fol'), '--follow');
});
