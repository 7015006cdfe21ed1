/**
 * The layout's promises, checked on the source: no module imports itself back through others
 * (type imports included), and the eBPF library imports nothing from the rest of Ciliate.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { test } from 'node:test';

const SRC = import.meta.dirname;

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(path);
    return entry.name.endsWith('.ts') && !entry.name.endsWith('.test.ts') ? [path] : [];
  });
}

/** Relative imports and re-exports of a file, type-only ones included, as absolute paths. */
function relativeImports(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  return [...text.matchAll(/^(?:import|export)\s[^;]*?from\s+'(\.{1,2}\/[^']+)'/gms)].map((m) => resolve(dirname(file), m[1]));
}

const graph = new Map(sourceFiles(SRC).map((file) => [file, relativeImports(file)]));

test('no import cycles in src/', () => {
  const cycles: string[] = [];
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = (file: string, path: string[]): void => {
    if (state.get(file) === 'done') return;
    if (state.get(file) === 'visiting') {
      cycles.push([...path.slice(path.indexOf(file)), file].map((f) => relative(SRC, f)).join(' → '));
      return;
    }
    state.set(file, 'visiting');
    for (const dep of graph.get(file) ?? []) visit(dep, [...path, file]);
    state.set(file, 'done');
  };
  for (const file of graph.keys()) visit(file, []);
  assert.deepEqual(cycles, []);
});

test('the eBPF library imports nothing from the rest of Ciliate', () => {
  const ebpf = join(SRC, 'ebpf');
  const outside = [...graph]
    .filter(([file]) => file.startsWith(`${ebpf}/`))
    .flatMap(([file, deps]) => deps.filter((dep) => !dep.startsWith(`${ebpf}/`)).map((dep) => `${relative(SRC, file)} → ${relative(SRC, dep)}`));
  assert.deepEqual(outside, []);
});
