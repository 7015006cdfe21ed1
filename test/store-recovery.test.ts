/**
 * The agent over a damaged embedded store: a torn journal tail is never passed over (an error in
 * the log, degraded in `ciliate status` until acknowledged, across restarts), and an emptied
 * journal stops the agent from starting, saying why and what to do.
 * @module
 */
import assert from 'node:assert/strict';
import { readFile, stat, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { TestNode, cli } from './support/cluster.ts';

interface Status {
  state: string;
  reasons: string[];
  store: { recovered?: { file: string; truncatedAt: number; droppedBytes: number; lastRevision: number; reason: string }[] };
}

test('an agent whose store journal was cut mid-record starts, logs the loss as an error and stays degraded until acknowledged', async (t) => {
  const node = await TestNode.start(t);
  await node.stopAgent('SIGTERM');
  const journal = join(node.dir, 'state', 'store', 'journal.log');
  const text = await readFile(journal, 'utf8');
  // The last record starts after the newline that ends the one before it; the one before says the revision kept.
  const lastStart = text.lastIndexOf('\n', text.length - 2) + 1;
  const kept = text.slice(text.lastIndexOf('\n', lastStart - 2) + 1, lastStart);
  const lastRevision = Number(/"(?:revision|after)":(\d+)/.exec(kept)?.[1]);
  assert.ok(lastStart > 0 && Number.isSafeInteger(lastRevision), `the journal has records:\n${text}`);
  await truncate(journal, text.length - 5);

  node.log = '';
  await node.startAgent();
  const logged = node.log.split('\n').filter((line) => line.includes('dropped a torn tail')).map((line) => JSON.parse(line) as { level: number; msg: string });
  assert.equal(logged.length, 1, node.log);
  assert.equal(logged[0].level, 50, 'logged at error level');
  assert.match(logged[0].msg, new RegExp(`journal\\.log: dropped a torn tail of ${text.length - 5 - lastStart} bytes at byte ${lastStart} \\(incomplete record\\); the store now ends at revision ${lastRevision}`));

  const status = await node.client.get<Status>('/v1/status');
  assert.equal(status.state, 'degraded');
  assert.match(status.reasons[0] ?? '', /^store: the state store lost a journal tail of \d+ bytes at byte \d+ .* run ciliate store acknowledge$/);
  assert.deepEqual(
    status.store.recovered?.map(({ file, truncatedAt, droppedBytes, lastRevision, reason }) => ({ file, truncatedAt, droppedBytes, lastRevision, reason })),
    [{ file: journal, truncatedAt: lastStart, droppedBytes: text.length - 5 - lastStart, lastRevision, reason: 'incomplete record' }],
  );

  // A restart is not an acknowledgement.
  await node.stopAgent('SIGTERM');
  await node.startAgent();
  assert.equal((await node.client.get<Status>('/v1/status')).store.recovered?.length, 1);

  const acknowledged = await cli(node, 'store', 'acknowledge');
  assert.equal(acknowledged.code, 0, acknowledged.stderr);
  assert.match(acknowledged.stdout, /^1 store recoveries acknowledged/);
  const after = await node.client.get<Status>('/v1/status');
  assert.equal(after.state, 'ok', JSON.stringify(after.reasons));
  assert.equal(after.store.recovered, undefined);

  // An emptied journal is refused: the agent does not start, and says what was found and what to do.
  await node.stopAgent('SIGTERM');
  await truncate(journal, 0);
  node.log = '';
  await assert.rejects(node.startAgent(), /agent exited/);
  assert.match(node.log, /journal\.log: the journal is empty \(0 bytes\), without even its header\. The store's files were left as they are\. To recover: restore .* from a backup of the whole directory, if you have one; or stop the agent and move the store directory away/);
  assert.equal((await stat(journal)).size, 0);
});
