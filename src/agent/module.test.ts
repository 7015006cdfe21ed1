import assert from 'node:assert/strict';
import { test } from 'node:test';
import { pino } from 'pino';
import { cell, defineModule, ModuleError, ModuleHost, orderModules, type AgentModule } from './module.ts';
import { AGENT_MODULES, ApiServerCell, loadConfig } from './modules/index.ts';

const silent = pino({ level: 'silent' });
const config = loadConfig({ flags: { nodeName: 'module-test' } });

/** Three modules whose starts and stops are written to `events`; `c` can be made to fail. */
function chain(events: string[], options: { failIn?: string } = {}) {
  const A = cell<{ a: number }>('a');
  const B = cell<{ b: number }>('b');
  const module = (name: string, needs: Record<string, ReturnType<typeof cell<unknown>>>, provides?: ReturnType<typeof cell<unknown>>): AgentModule =>
    defineModule({
      name,
      description: name,
      needs,
      provides,
      start(values) {
        if (options.failIn === name) throw new Error(`${name} cannot start`);
        events.push(`start ${name} ${JSON.stringify(values)}`);
        return { value: { [name]: 1 }, stop: () => void events.push(`stop ${name}`) };
      },
    });
  // Listed out of order: c needs b, b needs a.
  return [module('c', { b: B }), module('b', { a: A }, B), module('a', {}, A)];
}

test('modules start in the order of their needs and stop in reverse', async () => {
  const events: string[] = [];
  const host = new ModuleHost(chain(events), config, silent, ApiServerCell);
  assert.deepEqual(host.order, ['a', 'b', 'c']);
  await host.start();
  assert.deepEqual(events, ['start a {}', 'start b {"a":{"a":1}}', 'start c {"b":{"b":1}}']);
  await host.stop();
  assert.deepEqual(events.slice(3), ['stop c', 'stop b', 'stop a']);
});

test('a failed start stops what had started and names the module', async () => {
  const events: string[] = [];
  const host = new ModuleHost(chain(events, { failIn: 'c' }), config, silent, ApiServerCell);
  await assert.rejects(host.start(), (error: unknown) => error instanceof ModuleError && error.code === 'ERR_MODULE_START' && error.module === 'c' && /starting module c: c cannot start/.test(error.message));
  assert.deepEqual(events, ['start a {}', 'start b {"a":{"a":1}}', 'stop b', 'stop a']);
});

test('a need nobody provides, two providers of one cell and a cycle are refused before anything starts', () => {
  const X = cell<number>('x');
  const Y = cell<number>('y');
  const m = (name: string, needs: Record<string, typeof X>, provides?: typeof X): AgentModule => ({ name, description: name, needs, provides, start: () => ({ value: 0 }) });
  assert.throws(() => orderModules([m('lonely', { x: X })]), /module lonely needs x, which no module provides/);
  assert.throws(() => orderModules([m('one', {}, X), m('two', {}, X)]), /modules one and two both provide x/);
  assert.throws(() => orderModules([m('p', { y: Y }, X), m('q', { x: X }, Y)]), /cycle: p → q → p/);
});

test("the agent's modules form a graph with every need provided, each module once", () => {
  const order = orderModules(AGENT_MODULES, new Set([ApiServerCell.name]));
  assert.equal(order.length, AGENT_MODULES.length);
  assert.equal(new Set(order.map((m) => m.name)).size, order.length);
  const position = (name: string) => order.findIndex((m) => m.name === name);
  assert.ok(position('store') < position('node') && position('node') < position('endpoints'));
  assert.ok(position('policy') < position('endpoints') && position('endpoints') < position('policy-status'));
  assert.equal(order.at(-1)?.name, 'api');
});
