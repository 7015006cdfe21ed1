/**
 * A tiny authoritative DNS server for tests, on dns-packet (the library the DNS proxy uses):
 * answers A queries over UDP and TCP from a fixed table with the table's TTL, NXDOMAIN otherwise,
 * and counts the queries it saw. Run in-process (`serveDns`) or in a namespace of a test:
 * `node test/support/dns-server.ts <address> <port> '<json records>'` prints `ready <port>` once bound.
 * @module
 */
import { createSocket, type Socket } from 'node:dgram';
import { createServer } from 'node:net';
import { decode, encode, type Answer } from 'dns-packet';

/** name (lower case, no trailing dot) → its A records; a CNAME when `cname` is set. */
export type DnsRecords = Record<string, { a?: string[]; cname?: string; ttl: number }>;

export interface DnsServer {
  port: number;
  queries: string[];
  close(): Promise<void>;
}

function answer(records: DnsRecords, name: string): Answer[] | undefined {
  const out: Answer[] = [];
  for (let current = name, hops = 0; hops < 8; hops++) {
    const record = records[current];
    if (record === undefined) return out.length > 0 ? out : undefined;
    if (record.cname !== undefined) {
      out.push({ type: 'CNAME', name: current, ttl: record.ttl, data: record.cname });
      current = record.cname;
      continue;
    }
    for (const ip of record.a ?? []) out.push({ type: 'A', name: current, ttl: record.ttl, data: ip });
    return out;
  }
  return out;
}

/** Tries for a port free for both UDP and TCP when asked for any (0): another test may hold the TCP side of the UDP port drawn. */
const PORT_ATTEMPTS = 20;

export async function serveDns(address: string, port: number, records: DnsRecords): Promise<DnsServer> {
  const queries: string[] = [];
  const respond = (bytes: Buffer): Buffer | undefined => {
    let query;
    try {
      query = decode(bytes);
    } catch {
      return undefined;
    }
    const question = query.questions?.[0];
    if (question === undefined) return undefined;
    const name = question.name.toLowerCase().replace(/\.$/, '');
    queries.push(name);
    const answers = question.type === 'A' ? answer(records, name) : [];
    return encode({ type: 'response', id: query.id, flags: (answers === undefined ? 3 : 0) | (1 << 10), questions: query.questions, answers: answers ?? [] });
  };
  for (let attempt = 1; ; attempt++) {
    const socket: Socket = createSocket('udp4');
    socket.on('message', (bytes, from) => {
      const response = respond(bytes);
      if (response) socket.send(response, from.port, from.address);
    });
    // The same over TCP, one length-prefixed message at a time.
    const tcp = createServer((conn) => {
      let received = Buffer.alloc(0);
      conn.on('error', () => undefined);
      conn.on('data', (chunk: Buffer) => {
        received = Buffer.concat([received, chunk]);
        while (received.length >= 2 && received.length >= 2 + received.readUInt16BE(0)) {
          const response = respond(received.subarray(2, 2 + received.readUInt16BE(0)));
          received = received.subarray(2 + received.readUInt16BE(0));
          if (!response) return conn.destroy();
          const framed = Buffer.alloc(2 + response.length);
          framed.writeUInt16BE(response.length, 0);
          response.copy(framed, 2);
          conn.write(framed);
        }
      });
    });
    const close = () => Promise.all([new Promise<void>((done) => socket.close(() => done())), new Promise<void>((done) => (tcp.listening ? tcp.close(() => done()) : done()))]).then(() => undefined);
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once('error', reject);
        socket.bind(port, address, () => resolve());
      });
      const bound = socket.address().port;
      await new Promise<void>((resolve, reject) => {
        tcp.once('error', reject);
        tcp.listen(bound, address, () => resolve());
      });
      return { port: bound, queries, close };
    } catch (error) {
      await close();
      if (port !== 0 || (error as NodeJS.ErrnoException).code !== 'EADDRINUSE' || attempt >= PORT_ATTEMPTS) throw error;
    }
  }
}

if (import.meta.main) {
  const [address, port, records] = process.argv.slice(2);
  const server = await serveDns(address, Number(port), JSON.parse(records) as DnsRecords);
  process.stdout.write(`ready ${server.port}\n`);
}
