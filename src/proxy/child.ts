/**
 * The proxy process: forked by the agent (ProxySupervisor), judges HTTP and reports L7 records
 * back over IPC. It listens only once it has the policy, so a restarted proxy never answers
 * with less than the policy in force; it exits when the agent goes away.
 * @module
 */
import { HttpProxy } from './http-proxy.ts';
import { dieWithParent } from './libc.ts';
import { WireRecordsWriter, type FromProxy, type ToProxy } from './protocol.ts';

// A proxy without its agent would serve a policy nobody updates: it goes when the agent goes.
if (!dieWithParent(Number(process.env.CILIATE_PROXY_PARENT))) process.exit(0);

/** Records waiting for the IPC channel before new ones are counted lost instead. */
const MAX_PENDING = 8192;
/**
 * Records go to the agent in batches, every FLUSH_MS or every FLUSH_COUNT records: a message
 * per request (serialised here, parsed and woken for there) cost more than proxying it.
 */
const FLUSH_MS = 50;
const FLUSH_COUNT = 1024;

const send = (message: FromProxy) => process.send?.(message);
const pending = new WireRecordsWriter();
let lost = 0;
let timer: NodeJS.Timeout | undefined;
const flush = () => {
  clearTimeout(timer);
  timer = undefined;
  if (pending.size === 0 && lost === 0) return;
  send({ type: 'records', records: pending.take(), lost });
  lost = 0;
};

const proxy = new HttpProxy({
  port: Number(process.env.CILIATE_PROXY_PORT),
  ...(process.env.CILIATE_PROXY_ORIGINS ? { origins: process.env.CILIATE_PROXY_ORIGINS } : {}),
  ...(process.env.CILIATE_PROXY_LISTENERS ? { listeners: process.env.CILIATE_PROXY_LISTENERS } : {}),
  emit(record) {
    if (pending.size >= MAX_PENDING) lost++;
    else pending.add(record);
    if (pending.size >= FLUSH_COUNT) flush();
    else timer ??= setTimeout(flush, FLUSH_MS);
  },
});

let listening = false;
process.on('message', (message: ToProxy) => {
  if (message.type !== 'state') return;
  proxy.setState(message.state);
  if (listening) return;
  listening = true;
  proxy.listen().then(
    (port) => send({ type: 'ready', port }),
    (error: unknown) => {
      send({ type: 'fatal', message: error instanceof Error ? error.message : String(error) });
      process.exit(1);
    },
  );
});
process.on('disconnect', () => process.exit(0));
