/**
 * Flow export against a real agent, real pods, the Star Wars policy and real traffic: the
 * static exporter (agent settings) rotating at a small size and keeping N backups, flow logs
 * from a config file with an allowlist, a denylist and a field mask, that file edited while the
 * agent runs (a new exporter, a changed filter, a removed one), and a bad edit rejected while
 * the exporters in force keep writing.
 * @module
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ExporterStats, FlowLogsStatus } from '../src/observer/index.ts';
import { TestNode, cli, httpRequest, probeTcp, sleep, starWars } from './support/cluster.ts';

interface ExportLine {
  flow?: Record<string, unknown> & { verdict?: string; uuid?: string; source?: { pod_name?: string; identity?: number }; destination?: { pod_name?: string; identity?: number } };
  lost_events?: { source: string; num_events_lost: string };
  node_name: string;
  time: string;
}

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'ciliate-export-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function readLines(path: string): ExportLine[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return [];
  }
  assert.ok(text === '' || text.endsWith('\n'), `${path} ends with a whole line`);
  return text.split('\n').filter(Boolean).map((line, i) => {
    try {
      return JSON.parse(line) as ExportLine;
    } catch (error) {
      throw new Error(`${path}:${i + 1} is not JSON: ${(error as Error).message}: ${line.slice(0, 200)}`);
    }
  });
}

const flowsOf = (lines: ExportLine[]) => lines.flatMap((l) => (l.flow ? [l.flow] : []));

interface FlowExportView {
  exporters: ExporterStats[];
  flowLogs?: FlowLogsStatus;
}

async function exportStatus(node: TestNode): Promise<FlowExportView> {
  const status = await node.client.get<{ flowExport: FlowExportView }>('/v1/status');
  return status.flowExport;
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 15_000, detail: () => Promise<unknown> = async () => ''): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(await detail())}`);
    await sleep(100);
  }
}

/** Writes the file as editors do: a new file renamed over the old one. */
function replaceFile(path: string, text: string): void {
  writeFileSync(`${path}.tmp`, text);
  renameSync(`${path}.tmp`, path);
}

/** Both ships ask to land `times` times: the tiefighter lands, the xwing's SYNs are dropped. */
async function land(ships: Awaited<ReturnType<typeof starWars>>, times: number): Promise<void> {
  const target = `${ships.deathstar.endpoint.ipv4}:80`;
  for (let i = 0; i < times; i++) {
    assert.equal((await httpRequest(ships.tiefighter.netns, 'POST', ships.landing)).status, 200, 'the tiefighter lands');
    // A bare connect: an HTTP client whose SYNs go unanswered lingers until its own connect timeout.
    assert.deepEqual(await probeTcp(ships.xwing.netns, [target], 500), { [target]: false }, 'the xwing does not');
  }
}

/** A flow-logs config file's text. */
function flowLogsYaml(logs: readonly Record<string, unknown>[]): string {
  return `flowLogs:\n${logs.map((l) => `  - ${Object.entries(l).map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join('\n    ')}\n`).join('')}`;
}

test('flow export: JSON lines as hubble writes them, rotation with N backups, allowlist, denylist, field mask, and flow logs reloaded without a restart', async (t) => {
  const dir = tempDir(t);
  const staticFile = join(dir, 'static', 'flows.log');
  const logs = join(dir, 'logs');
  const config = join(dir, 'flowlogs.yaml');
  const drops = { name: 'drops', filePath: `${logs}/drops.log`, fileMaxSizeMb: 10, includeFilters: [{ verdict: ['DROPPED'] }] };
  // Proto and lowerCamelCase field names both, as protojson takes them.
  const noXwing = { name: 'no-xwing', filePath: `${logs}/no-xwing.log`, excludeFilters: [{ source_pod: ['default/xwing'] }, { destinationPod: ['default/xwing'] }] };
  const masked = { name: 'masked', filePath: `${logs}/masked.log`, fieldMask: ['time', 'source.identity', 'destination.identity', 'verdict'] };
  writeFileSync(config, flowLogsYaml([drops, noXwing, masked]));
  const maxSize = Math.round(0.01 * 1024 * 1024);
  const node = await TestNode.start(t, {
    extraArgs: [
      '--hubble-export-file-path', staticFile,
      '--hubble-export-file-max-size-mb', '0.01',
      '--hubble-export-file-max-backups', '2',
      '--hubble-flowlogs-config-path', config,
    ],
  });
  const ships = await starWars(t, node);
  const { xwing } = ships;
  await land(ships, 6);
  const settled = await until('the exporters to write the traffic', async () => {
    const s = await exportStatus(node);
    return s.exporters[0].flowsWritten > 0 && s.exporters[0].queued === 0 && s.exporters[0].rotations >= 3 ? s : undefined;
  }, 15_000, () => exportStatus(node));

  // The static exporter: rotated at the size, two backups kept, named as lumberjack names them.
  const stat = settled.exporters[0];
  assert.equal(stat.name, 'static');
  assert.equal(stat.dropped, 0, 'nothing dropped on a quiet node');
  assert.equal(stat.lastError, undefined);
  const backups = readdirSync(join(dir, 'static')).filter((f) => f !== 'flows.log').sort();
  assert.equal(backups.length, 2, `two backups kept after ${stat.rotations} rotations: ${backups.join(', ')}`);
  for (const name of backups) {
    assert.match(name, /^flows-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}\.\d{3}\.log$/);
    assert.ok(statSync(join(dir, 'static', name)).size <= maxSize, `${name} is within the max size`);
    assert.equal((statSync(join(dir, 'static', name)).mode & 0o777).toString(8), '600', 'flow logs are not world-readable');
  }
  const staticLines = [...backups.map((b) => join(dir, 'static', b)), staticFile].flatMap(readLines);
  assert.ok(staticLines.length > 20);
  for (const line of staticLines) {
    assert.equal(line.node_name, 'n1');
    assert.ok(line.flow || line.lost_events, `a flow or a lost event: ${JSON.stringify(line).slice(0, 200)}`);
    if (line.flow) assert.equal(line.time, line.flow.time, 'the event time is the flow time');
  }
  // The same JSON as `ciliate observe -o json` prints for the same flow.
  const observed = await cli(node, 'observe', '--all', '-o', 'json');
  assert.equal(observed.code, 0, observed.stderr);
  const byUuid = new Map(observed.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as ExportLine).flatMap((l) => (l.flow ? [[l.flow.uuid, l] as const] : [])));
  const exportedFlow = staticLines.findLast((l) => l.flow && byUuid.has(l.flow.uuid))!;
  assert.ok(exportedFlow, 'an exported flow is still in the buffer');
  assert.deepEqual(exportedFlow, byUuid.get(exportedFlow.flow!.uuid));

  // Allowlist: only drops, and the xwing's are among them.
  const dropped = flowsOf(readLines(join(logs, 'drops.log')));
  assert.ok(dropped.length > 0, 'drops exported');
  assert.deepEqual(dropped.filter((f) => f.verdict !== 'DROPPED'), [], 'only DROPPED flows');
  assert.ok(dropped.some((f) => f.source?.pod_name === 'xwing' && f.drop_reason_desc === 'POLICY_DENIED'));
  // Denylist: everything but the xwing's.
  const notXwing = flowsOf(readLines(join(logs, 'no-xwing.log')));
  assert.ok(notXwing.some((f) => f.source?.pod_name === 'tiefighter'), 'the tiefighter is exported');
  assert.deepEqual(notXwing.filter((f) => f.source?.pod_name === 'xwing' || f.destination?.pod_name === 'xwing'), [], 'nothing of the xwing');
  // Field mask: only the listed paths.
  const maskedFlows = flowsOf(readLines(join(logs, 'masked.log')));
  assert.ok(maskedFlows.length > 0);
  for (const f of maskedFlows) {
    assert.deepEqual(Object.keys(f).filter((k) => !['time', 'source', 'destination', 'verdict'].includes(k)), [], JSON.stringify(f));
    assert.deepEqual(Object.keys(f.source ?? {}).filter((k) => k !== 'identity'), []);
    assert.deepEqual(Object.keys(f.destination ?? {}).filter((k) => k !== 'identity'), []);
  }
  assert.ok(maskedFlows.some((f) => f.source?.identity === xwing.endpoint.identity && f.verdict === 'DROPPED'), 'the xwing drop, by identity');
  assert.deepEqual(settled.flowLogs?.exporters.map((e) => e.name), ['drops', 'no-xwing', 'masked']);
  assert.ok(settled.flowLogs.exporters.every((e) => e.flowsWritten > 0 && e.dropped === 0));
  assert.ok(settled.flowLogs.exporters[0].filtered > 0, 'the allowlist left flows out');

  // Edit the flow logs while the agent runs: drops now takes the tiefighter's flows instead, a
  // new exporter takes the xwing's, masked goes.
  const dropsBefore = readLines(join(logs, 'drops.log')).length;
  const xwingLog = { name: 'xwing', filePath: `${logs}/xwing.log`, includeFilters: [{ source_pod: ['default/xwing'] }] };
  replaceFile(config, flowLogsYaml([{ ...drops, includeFilters: [{ source_pod: ['default/tiefighter'] }] }, noXwing, xwingLog]));
  const reloaded = await until('the edited flow logs', async () => {
    const s = (await exportStatus(node)).flowLogs;
    return s?.exporters.map((e) => e.name).join() === 'drops,no-xwing,xwing' ? s : undefined;
  });
  assert.equal(reloaded.reloads, 2);
  assert.equal(reloaded.lastError, undefined);
  assert.equal(reloaded.exporters[1].flowsWritten > 0, true, 'the unchanged exporter kept running with its counts');
  await land(ships, 2);
  await until('the new flows written', async () => ((await exportStatus(node)).flowLogs?.exporters[2].flowsWritten ?? 0) > 0 || undefined);
  await sleep(300);
  const dropsAfter = flowsOf(readLines(join(logs, 'drops.log')).slice(dropsBefore));
  assert.ok(dropsAfter.length > 0, 'drops.log gets the new filter\'s flows');
  assert.deepEqual(dropsAfter.filter((f) => f.source?.pod_name !== 'tiefighter'), [], 'only the tiefighter\'s flows since the edit');
  const xwingFlows = flowsOf(readLines(join(logs, 'xwing.log')));
  assert.ok(xwingFlows.some((f) => f.verdict === 'DROPPED'));
  assert.deepEqual(xwingFlows.filter((f) => f.source?.pod_name !== 'xwing'), []);

  // A bad edit: rejected, named in the log and the status, and the exporters in force keep writing.
  const xwingBefore = readLines(join(logs, 'xwing.log')).length;
  writeFileSync(config, flowLogsYaml([{ ...drops, includeFilters: [{ verdict: ['DROPED'] }] }]));
  const rejected = await until('the bad edit reported', async () => {
    const s = (await exportStatus(node)).flowLogs;
    return s?.lastError ? s : undefined;
  });
  assert.match(rejected.lastError!, /flowLogs\[0\]\.includeFilters\[0\]\.verdict\[0\]: unknown value "DROPED"/);
  assert.ok(rejected.lastError!.includes(config), 'the error names the file');
  assert.deepEqual(rejected.exporters.map((e) => e.name), ['drops', 'no-xwing', 'xwing'], 'the previous exporters stay');
  assert.equal(rejected.reloads, 2);
  assert.match(node.log, /DROPED.*the flow logs in force keep running/);
  await land(ships, 1);
  await until('the old exporters still writing', async () => (readLines(join(logs, 'xwing.log')).length > xwingBefore ? true : undefined));
  const status = await cli(node, 'status');
  assert.match(status.stdout, /flowExport:.*"name":"xwing"/);
});

test('flow export: a bad allowlist or field mask stops the agent from starting, naming the setting', async (t) => {
  const dir = tempDir(t);
  await assert.rejects(
    TestNode.start(t, { extraArgs: ['--hubble-export-file-path', join(dir, 'a.log'), '--hubble-export-allowlist', '{"verdict":["DROPPED"]} {"source_pood":["x"]}'] }),
    /hubbleExportAllowlist\[1\]\.source_pood: unknown field of FlowFilter/,
  );
  await assert.rejects(
    TestNode.start(t, { extraArgs: ['--hubble-export-file-path', join(dir, 'b.log'), '--hubble-export-fieldmask', 'time,source.identty'] }),
    /hubbleExportFieldmask\[1\]: \\?"source\.identty\\?": Endpoint has no field \\?"identty/,
  );
});
