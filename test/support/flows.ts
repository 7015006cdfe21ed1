/**
 * Flows as a user reads them (`ciliate observe -o json`), and policy as a user imports it, for the
 * tests that check what a node reported about a connection.
 */
import assert from 'node:assert/strict';
import { cli, sleep, type TestNode } from './cluster.ts';

/** A flow as `observe -o json` prints it (Hubble's proto field names), the fields the tests read. */
export interface Flow {
  verdict?: string;
  Type?: string;
  drop_reason_desc?: string;
  source?: { identity?: number };
  destination?: { identity?: number };
  IP?: { source?: string; destination?: string };
  l4?: { TCP?: { destination_port?: number } };
  l7?: { type?: string; http?: { method?: string; url?: string; code?: number } };
}

/** The last flows `node` kept that match `filter` (observe's flags). */
export async function flows(node: TestNode, ...filter: string[]): Promise<Flow[]> {
  const out = await cli(node, 'observe', '--last', '2000', ...filter, '-o', 'json');
  assert.equal(out.code, 0, out.stderr);
  return out.stdout.trim().split('\n').filter(Boolean).map((l) => (JSON.parse(l) as { flow: Flow }).flow);
}

/** Until `check` holds on the flows `node` reports (the observer reads the ring asynchronously), 5 s at most. */
export async function eventually(node: TestNode, filter: string[], check: (f: Flow[]) => boolean): Promise<Flow[]> {
  let seen: Flow[] = [];
  for (let i = 0; i < 20; i++) {
    seen = await flows(node, ...filter);
    if (check(seen)) break;
    await sleep(250);
  }
  return seen;
}

/** Imports `yaml` on `node` and waits until every node enforces it. */
export async function enforce(node: TestNode, file: string, yaml: string): Promise<void> {
  const { revision } = await node.client.call<{ revision: number }>('POST', '/v1/policies', { file, yaml });
  const waited = await cli(node, 'policy', 'wait', String(revision), '--timeout', '20');
  assert.equal(waited.code, 0, waited.stderr);
}
