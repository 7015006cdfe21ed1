import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { readdirSync } from 'node:fs';

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, '..');

test('the README demo shows live events from both directions and the counters, and leaves nothing behind', async () => {
  const { stdout } = await run(process.execPath, [join(ROOT, 'src/cli/main.ts'), 'demo', '--count', '2'], { cwd: ROOT });
  const id = /ciliate-demo-([0-9a-f]+)-a/.exec(stdout)?.[1];
  assert.ok(id, stdout);
  const requests = stdout.split('\n').filter((l) => /\bin\s+ICMP\s+10\.200\.0\.1\s+10\.200\.0\.2\s+echo-request/.test(l));
  const replies = stdout.split('\n').filter((l) => /\bout\s+ICMP\s+10\.200\.0\.2\s+10\.200\.0\.1\s+echo-reply/.test(l));
  assert.equal(requests.length, 2, stdout);
  assert.equal(replies.length, 2, stdout);
  assert.match(stdout, /UDP\s+10\.200\.0\.1:\d+\s+10\.200\.0\.2:7777/);
  assert.match(stdout, /^ICMP\s+\d+\s+\d+$/m);
  assert.match(stdout, /events: \d+ read from the ring buffer, 0 lost/);
  const { stdout: netns } = await run('ip', ['netns', 'list']);
  assert.doesNotMatch(netns, new RegExp(`ciliate-demo-${id}`));
  assert.ok(!readdirSync('/sys/fs/bpf').includes(`ciliate-demo-${id}`));
});
