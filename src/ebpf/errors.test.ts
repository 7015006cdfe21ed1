import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { BpfError, NotSupportedError, errorFromErrno } from './errors.ts';
import { Errno } from './internal/constants.ts';

const run = promisify(execFile);

test('errno maps once to typed errors with stable codes and the context first', () => {
  const cases: [number, string][] = [
    [Errno.EEXIST, 'ERR_KEY_EXIST'],
    [Errno.ENOENT, 'ERR_NOT_FOUND'],
    [Errno.E2BIG, 'ERR_MAP_FULL'],
    [Errno.EPERM, 'ERR_PERMISSION'],
    [Errno.EACCES, 'ERR_PERMISSION'],
    [Errno.ESTALE, 'ERR_STALE_REVISION'],
    [Errno.ENOTSUPP_KERNEL, 'ERR_NOT_SUPPORTED'],
    [Errno.EOPNOTSUPP, 'ERR_NOT_SUPPORTED'],
  ];
  for (const [errno, code] of cases) {
    const error = errorFromErrno('updating map ct4_global', errno);
    assert.equal(error.code, code, `errno ${errno}`);
    assert.equal(error.errno, errno);
    assert.ok(error.message.startsWith('updating map ct4_global: '), error.message);
    assert.ok(BpfError.is(error, code as BpfError['code']));
  }
  assert.equal(new NotSupportedError('kprobes').message, 'not supported on this kernel: kprobes');
});

test('without root, creating a map fails with a message that says eBPF needs root', async () => {
  const script = [
    `import { BpfMap, MapType } from ${JSON.stringify(join(import.meta.dirname, 'index.ts'))};`,
    `try { BpfMap.create({ type: MapType.HASH, keySize: 4, valueSize: 4, maxEntries: 1 }); console.log('created'); }`,
    `catch (e) { console.log(e.code + ': ' + e.message); }`,
  ].join('\n');
  const { stdout } = await run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all', process.execPath, '--input-type=module', '-e', script]);
  assert.match(stdout, /^ERR_PERMISSION: creating map of type 1: EPERM: eBPF needs root/);
});
