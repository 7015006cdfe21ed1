/**
 * The README's first command: the Star Wars demo on one node runs end to end with nothing but
 * this machine, shows the decisions as hubble's compact flows, and leaves nothing behind.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, '..');

test('the README demo: the TIE fighter lands, the X-wing is dropped by policy as a live flow, and nothing is left behind', async () => {
  const { stdout } = await run(process.execPath, [join(ROOT, 'src/cli/main.ts'), 'demo', '--requests', '2'], { cwd: ROOT, timeout: 120_000 });
  const id = /node namespace ciliate-demo-([0-9a-f]+),/.exec(stdout)?.[1];
  assert.ok(id, stdout);
  assert.match(stdout, /policy CiliumNetworkPolicy\/default\/rule1 .* enforced at revision \d+/);
  // The Death Star is a Deployment, as in Cilium's manifest; the ships are bare pods.
  assert.match(stdout, /pod default\/deathstar-1 .*class=deathstar \(Deployment deathstar\)/);
  assert.match(stdout, /pod default\/tiefighter .*class=tiefighter\n/);
  // The flows, in hubble's compact format: the fighter allowed by rule1, the X-wing's SYNs dropped.
  assert.match(stdout, /default\/tiefighter:\d+ \(ID:\d+\) -> default\/deathstar-1:80 \(ID:\d+\) policy-verdict:L3-L4 INGRESS CiliumNetworkPolicy\/default\/rule1 ALLOWED \(TCP Flags: SYN\)/);
  assert.match(stdout, /default\/tiefighter:\d+ \(ID:\d+\) -> default\/deathstar-2:80 \(ID:\d+\) to-endpoint FORWARDED \(TCP Flags: SYN\)/);
  assert.match(stdout, /default\/xwing:\d+ \(ID:\d+\) -> default\/deathstar-1:80 \(ID:\d+\) Policy denied DROPPED \(TCP Flags: SYN\)/);
  assert.match(stdout, /tiefighter → deathstar-1 {2}POST \/v1\/request-landing: 200 Ship landed/);
  assert.match(stdout, /xwing {6}→ deathstar-2 {2}POST \/v1\/request-landing: no answer \(timed out\)/);
  const verdicts = /flows by verdict: (.*)/.exec(stdout)?.[1] ?? '';
  assert.match(verdicts, /FORWARDED \d+/);
  assert.match(verdicts, /DROPPED \d+/);
  assert.ok(Number(/flows to the workload Deployment\/deathstar \(both pods\): (\d+)/.exec(stdout)?.[1]) > 0, 'the flows name the Death Star\'s workload');
  const { stdout: netns } = await run('ip', ['netns', 'list']);
  assert.doesNotMatch(netns, new RegExp(`ciliate-demo-${id}`));
  assert.ok(!readdirSync('/sys/fs/bpf').includes(`ciliate-demo-${id}`));
});
