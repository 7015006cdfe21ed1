/**
 * Running code inside another network namespace. Interface names and indexes are per namespace,
 * so attaching to a pod's interface means entering its namespace for the duration of the call.
 * @module
 */
import { closeSync, openSync } from 'node:fs';
import { CLONE_NEWNET, setns } from './internal/sys.ts';

/**
 * Runs `fn` synchronously with the JS thread inside the network namespace at `path`
 * (e.g. /run/netns/pod1), then returns to the original namespace, even when fn throws.
 * fn must not await: other callbacks must not run while the thread is elsewhere.
 *
 * @example
 * const link = inNetns('/run/netns/demo-a', () => attachTcx(prog, { interface: 'eth0', direction: 'ingress' }));
 */
export function inNetns<T>(path: string, fn: () => T): T {
  const original = openSync('/proc/thread-self/ns/net', 'r');
  const target = openSync(path, 'r');
  try {
    setns(target, CLONE_NEWNET, `entering network namespace ${path}`);
    try {
      return fn();
    } finally {
      setns(original, CLONE_NEWNET, 'returning to the original network namespace');
    }
  } finally {
    closeSync(target);
    closeSync(original);
  }
}

/** The path of a namespace made by `ip netns add NAME`. */
export function namedNetns(name: string): string {
  return `/run/netns/${name}`;
}
