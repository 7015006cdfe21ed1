/**
 * A DNS query from a test's namespace, as a pod's resolver library sends it (over UDP from a
 * connected socket, so only an answer from the server's own address and port is taken):
 * `node test/support/dns-client.ts <server> <name> [udp|tcp] [source port]` prints one JSON line:
 * `{"rcode":0,"id":…,"ips":[…]}`, or `{"timeout":true}` when no answer came within 3 s.
 * @module
 */
import { createSocket } from 'node:dgram';
import { connect } from 'node:net';
import { randomInt } from 'node:crypto';
import { decode, encode, type DecodedPacket } from 'dns-packet';

export interface DnsClientAnswer {
  timeout?: true;
  rcode?: number;
  /** TC: the answer did not fit; ask again over TCP. */
  truncated?: boolean;
  id?: number;
  ips?: string[];
}

const TIMEOUT_MS = 3_000;

function summary(packet: DecodedPacket): DnsClientAnswer {
  return {
    rcode: (packet.flags ?? 0) & 0xf,
    truncated: ((packet.flags ?? 0) & 0x200) !== 0,
    id: packet.id,
    ips: (packet.answers ?? []).flatMap((a) => (a.type === 'A' && typeof a.data === 'string' ? [a.data] : [])),
  };
}

export function queryDns(server: string, name: string, protocol: 'udp' | 'tcp', sourcePort = 0): Promise<DnsClientAnswer> {
  const id = randomInt(0x10000);
  const query = encode({ type: 'query', id, flags: 1 << 8, questions: [{ type: 'A', name }] });
  return new Promise((resolve) => {
    const timer = setTimeout(() => done({ timeout: true }), TIMEOUT_MS);
    let done: (answer: DnsClientAnswer) => void;
    if (protocol === 'udp') {
      const socket = createSocket('udp4');
      done = (answer) => {
        clearTimeout(timer);
        socket.close();
        resolve(answer);
      };
      socket.on('message', (bytes) => {
        const packet = decode(bytes);
        if (packet.id === id) done(summary(packet));
      });
      // Connected, as glibc's resolver is: the kernel drops an answer from any other address or port.
      socket.bind(sourcePort, () => socket.connect(53, server, () => socket.send(query)));
    } else {
      const socket = connect({ host: server, port: 53, localPort: sourcePort || undefined });
      let received = Buffer.alloc(0);
      done = (answer) => {
        clearTimeout(timer);
        socket.destroy();
        resolve(answer);
      };
      socket.on('error', () => undefined);
      socket.on('connect', () => {
        const framed = Buffer.alloc(2 + query.length);
        framed.writeUInt16BE(query.length, 0);
        query.copy(framed, 2);
        socket.write(framed);
      });
      socket.on('data', (chunk: Buffer) => {
        received = Buffer.concat([received, chunk]);
        if (received.length >= 2 && received.length >= 2 + received.readUInt16BE(0)) done(summary(decode(received.subarray(2, 2 + received.readUInt16BE(0)))));
      });
    }
  });
}

if (import.meta.main) {
  const [server, name, protocol = 'udp', sourcePort = '0'] = process.argv.slice(2);
  process.stdout.write(`${JSON.stringify(await queryDns(server, name, protocol === 'tcp' ? 'tcp' : 'udp', Number(sourcePort)))}\n`);
}
