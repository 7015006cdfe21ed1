/**
 * What the proxy forwards, end to end in a namespace of the test's own: nftables' TPROXY stands
 * in for the datapath's bpf_sk_assign (connections to 127.0.0.2 land on the proxy's transparent
 * listener, their original destination kept), and lets the proxy's own connections, which carry
 * its mark, through to the real server. Root (netns, nft, IP_TRANSPARENT, SO_MARK).
 * @module
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { addNetns, inNs } from '../../test/support/cluster.ts';
import type { L7HttpRecord } from '../observer/index.ts';
import { proxyIngressMark } from './index.ts';

const IDENTITY = 4242;
const PROXY_PORT = 15001;
/** A port with a server behind it, and one without. */
const SERVED = 8080;
const REFUSED = 8081;
/** An HTTP/2 (gRPC-like) server's port. */
const SERVED_H2 = 8082;

/**
 * Inside the namespace: the proxy (allowing POST and GET on /echo from 127.0.0.1), a server on
 * 127.0.0.2 that echoes what reached it, and a client that talks raw HTTP/1.1 to the proxy's side.
 */
const HARNESS = `
const [proxyModule, policyModule, identity, proxyPort, served, refused, servedH2] = process.argv.slice(1);
const http2 = await import('node:http2');
const { HttpProxy } = await import(proxyModule);
const { PolicyDirection } = await import(policyModule);
const http = await import('node:http');
const net = await import('node:net');
const crypto = await import('node:crypto');

const server = http.createServer((req, res) => {
  let body = '';
  req.setEncoding('latin1');
  req.on('data', (d) => (body += d));
  req.on('end', () => {
    if (req.url === '/echo/stream') {
      // Chunked, in two writes apart: the proxy streams it on.
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first,');
      setTimeout(() => res.end('second'), 50);
      return;
    }
    const echo = Buffer.from(JSON.stringify({ method: req.method, url: req.url, headers: req.rawHeaders, body }));
    res.writeHead(200, ['Connection', 'keep-alive, X-Hop', 'X-Hop', 'secret', 'Keep-Alive', 'timeout=42', 'X-End', 'kept', 'Content-Length', String(echo.length)]);
    res.end(echo);
  });
});
// WebSocket upgrades: a 101 (with Sec-WebSocket-Accept, and bytes of its own right behind it),
// then an echo; /echo/ws-frames speaks WebSocket frames for a real client;
// /echo/ws-old answers 426 instead.
const upgrades = [];
server.on('upgrade', (req, socket, head) => {
  upgrades.push({ url: req.url, headers: req.rawHeaders, head: head.toString('latin1') });
  if (req.url === '/echo/ws-old') {
    socket.end('HTTP/1.1 426 Upgrade Required\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade, X-Hop\\r\\nX-Hop: 1\\r\\nContent-Length: 9\\r\\n\\r\\nupgrade!\\n');
    return;
  }
  const accept = crypto.createHash('sha1').update(req.headers['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
  const frames = req.url === '/echo/ws-frames';
  socket.write('HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nKeep-Alive: timeout=1\\r\\nSec-WebSocket-Accept: ' + accept + '\\r\\n\\r\\n' + (frames ? '' : 'hello;'));
  if (!frames) {
    // An echo that answers the client's half-close with a last word of its own.
    socket.write(head);
    socket.on('data', (d) => socket.write(d));
    socket.on('end', () => socket.end('bye'));
    return;
  }
  // Small frames only: each masked client frame back unmasked (a close frame too, then the end).
  let data = head;
  const onData = (d) => {
    data = Buffer.concat([data, d]);
    while (data.length >= 6 && data.length >= 6 + (data[1] & 0x7f)) {
      const opcode = data[0] & 0x0f;
      const length = data[1] & 0x7f;
      const mask = data.subarray(2, 6);
      const payload = Buffer.from(data.subarray(6, 6 + length).map((b, i) => b ^ mask[i % 4]));
      data = data.subarray(6 + length);
      socket.write(Buffer.concat([Buffer.from([0x80 | opcode, length]), payload]));
      if (opcode === 8) socket.end();
    }
  };
  onData(Buffer.alloc(0));
  socket.on('data', onData);
});
await new Promise((resolve) => server.listen(Number(served), '127.0.0.2', resolve));

// HTTP/2 with prior knowledge, as gRPC: echoes what reached it, with a grpc-status trailer.
const h2server = http2.createServer();
h2server.on('stream', (stream, headers) => {
  let body = '';
  stream.setEncoding('latin1');
  stream.on('data', (d) => (body += d));
  stream.on('end', () => {
    stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
    stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0', 'grpc-message': 'ok' }));
    stream.end(JSON.stringify({ path: headers[':path'], te: headers.te, team: headers['x-team'], body }));
  });
});
await new Promise((resolve) => h2server.listen(Number(servedH2), '127.0.0.2', resolve));

const records = [];
const entry = (port) => ({ key: { identity: Number(identity), direction: PolicyDirection.INGRESS, protocol: 6, port, prefixLen: 64 }, deny: false, cookie: 1, ruleKeys: ['r'], l7: [{ ruleKey: 'r', http: [{ method: 'POST|GET', path: '/echo.*' }, { method: 'PUT', path: '/echo/edited', headerMatches: [{ name: 'X-Team', value: 'empire', mismatch: 'ADD' }, { name: 'X-Debug', value: '0', mismatch: 'DELETE' }, { name: 'X-Env', value: 'prod', mismatch: 'REPLACE' }, { name: 'X-Audit', value: 'on', mismatch: 'LOG' }] }] }] });
const proxy = new HttpProxy({ port: Number(proxyPort), emit: (r) => records.push(r) });
const grpcEntry = { key: { identity: Number(identity), direction: PolicyDirection.INGRESS, protocol: 6, port: Number(servedH2), prefixLen: 64 }, deny: false, cookie: 1, ruleKeys: ['g'], l7: [{ ruleKey: 'g', http: [{ method: 'POST', path: '/pkg.Greeter/SayHello', headerMatches: [{ name: 'x-team', value: 'empire', mismatch: 'ADD' }] }] }] };
proxy.setState({ revision: 1, identities: [['127.0.0.1', Number(identity)]], policies: [{ address: '127.0.0.2', entries: [entry(Number(served)), entry(Number(refused)), grpcEntry] }] });
await proxy.listen();

/** Writes \`text\` on one connection to 127.0.0.2:port and reads \`count\` responses (content-length framed). */
function exchange(port, text, count) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), '127.0.0.2', () => socket.write(text));
    let data = Buffer.alloc(0);
    const responses = [];
    const timer = setTimeout(() => { socket.destroy(); resolve({ responses, rest: data.toString('latin1') }); }, 3000);
    socket.on('data', (d) => {
      data = Buffer.concat([data, d]);
      for (;;) {
        const end = data.indexOf('\\r\\n\\r\\n');
        if (end < 0) break;
        const head = data.subarray(0, end).toString('latin1').split('\\r\\n');
        const length = Number(/^content-length: *(\\d+)$/im.exec(head.join('\\n'))?.[1] ?? 0);
        if (data.length < end + 4 + length) break;
        responses.push({ status: head[0], headers: head.slice(1).map((h) => h.split(':')[0].toLowerCase()), body: data.subarray(end + 4, end + 4 + length).toString('latin1') });
        data = data.subarray(end + 4 + length);
      }
      if (responses.length === count) { clearTimeout(timer); socket.destroy(); resolve({ responses, rest: data.toString('latin1') }); }
    });
    socket.on('error', reject);
  });
}

const out = {};
// Three requests pipelined on one connection: a chunked upload with hop-by-hop headers, a GET,
// and a DELETE no rule allows.
out.pipelined = await exchange(served, [
  'POST /echo/upload HTTP/1.1\\r\\nHost: svc\\r\\nConnection: keep-alive, X-Drop\\r\\nX-Drop: 1\\r\\nKeep-Alive: timeout=9\\r\\nTE: trailers\\r\\nProxy-Authorization: Basic eA==\\r\\nTransfer-Encoding: chunked\\r\\nX-Keep: yes\\r\\n\\r\\n',
  '5\\r\\nhello\\r\\n6\\r\\n world\\r\\n0\\r\\n\\r\\n',
  'GET /echo/second HTTP/1.1\\r\\nHost: svc\\r\\n\\r\\n',
  'DELETE /echo/third HTTP/1.1\\r\\nHost: svc\\r\\n\\r\\n',
].join(''), 3);
out.refused = await exchange(refused, 'GET /echo HTTP/1.1\\r\\nHost: svc\\r\\n\\r\\n', 1);
// Headers the rule's mismatch actions change on the way.
out.edited = await exchange(served, 'PUT /echo/edited HTTP/1.1\\r\\nHost: svc\\r\\nX-Team: rebels\\r\\nX-Debug: 1\\r\\nX-Env: dev\\r\\nx-env: staging\\r\\nContent-Length: 0\\r\\n\\r\\n', 1);
out.connect = await exchange(served, 'CONNECT svc:443 HTTP/1.1\\r\\nHost: svc:443\\r\\n\\r\\n', 1);
out.upgrade = await exchange(served, 'GET /echo HTTP/1.1\\r\\nHost: svc\\r\\nConnection: Upgrade, HTTP2-Settings\\r\\nUpgrade: h2c\\r\\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\\r\\n\\r\\n', 1);

/**
 * Writes \`text\` on a connection to 127.0.0.2:port and reads all it gets until the proxy closes
 * it; once a 101 head has come, writes \`after\`, and half-closes once \`after\` has come back.
 */
function upgradeExchange(port, text, after) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), '127.0.0.2', () => socket.write(text));
    let data = '';
    let wrote = false;
    const done = (ended) => { clearTimeout(timer); socket.destroy(); resolve({ data, ended }); };
    const timer = setTimeout(() => done(false), 3000);
    socket.setEncoding('latin1');
    socket.on('data', (d) => {
      data += d;
      if (!wrote && /HTTP\\/1\\.1 101 [^]*?\\r\\n\\r\\n/.test(data)) {
        wrote = true;
        socket.write(after);
      }
      if (wrote && data.endsWith(after)) socket.end();
    });
    socket.on('end', () => done(true));
    socket.on('error', reject);
  });
}
const wsHead = (path) => 'GET ' + path + ' HTTP/1.1\\r\\nHost: svc\\r\\nConnection: keep-alive, Upgrade, X-Drop\\r\\nX-Drop: 1\\r\\nKeep-Alive: timeout=9\\r\\nUpgrade: WebSocket\\r\\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n';
// The bytes the client sends right behind its request head reach the server after the 101.
out.ws = await upgradeExchange(served, wsHead('/echo/ws') + 'early;', 'late');
out.wsOld = await upgradeExchange(served, wsHead('/echo/ws-old'), '');
out.wsRefused = await upgradeExchange(refused, wsHead('/echo/ws-nobody'), '');
// Behind a request pipelined before it: upstream after that request's response, as any request.
out.wsAfter = await upgradeExchange(served, 'GET /echo/ws-before HTTP/1.1\\r\\nHost: svc\\r\\n\\r\\n' + wsHead('/echo/ws-after'), 'x');
out.wsDenied = await exchange(served, wsHead('/ws'), 1);
// Node's own WebSocket client (undici's): the handshake it checks, a text frame echoed, a close.
out.wsClient = await new Promise((resolve) => {
  const ws = new WebSocket('ws://127.0.0.2:' + served + '/echo/ws-frames');
  const seen = [];
  const timer = setTimeout(() => resolve({ seen, error: 'timed out' }), 3000);
  ws.onopen = () => ws.send('ping');
  ws.onmessage = (m) => { seen.push(m.data); ws.close(1000); };
  ws.onerror = (e) => { clearTimeout(timer); resolve({ seen, error: String(e.message ?? e.type) }); };
  ws.onclose = (e) => { clearTimeout(timer); resolve({ seen, code: e.code }); };
});
out.upgrades = upgrades;
out.stream = await new Promise((resolve, reject) => {
  http.get({ host: '127.0.0.2', port: Number(served), path: '/echo/stream' }, (res) => {
    let body = '';
    res.on('data', (d) => (body += d));
    res.on('end', () => resolve({ status: res.statusCode, chunked: res.headers['transfer-encoding'], body }));
  }).on('error', reject);
});
const h2call = (path) => new Promise((resolve, reject) => {
  const session = http2.connect('http://127.0.0.2:' + servedH2);
  session.on('error', reject);
  const call = session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers' });
  const out = { body: '', trailers: {} };
  call.setEncoding('latin1');
  call.on('response', (h) => (out.status = h[':status']));
  call.on('data', (d) => (out.body += d));
  call.on('trailers', (t) => (out.trailers = { status: t['grpc-status'], message: t['grpc-message'] }));
  call.on('end', () => { session.close(); resolve(out); });
  call.on('error', reject);
  call.end('\\x00\\x00\\x00\\x00\\x05hello');
});
out.grpc = await h2call('/pkg.Greeter/SayHello');
out.grpcDenied = await h2call('/pkg.Greeter/Steal');
h2server.close();
out.records = records;
await proxy.close();
server.close();
console.log(JSON.stringify(out));
`;

interface H2Call {
  status?: number;
  body: string;
  trailers: { status?: string; message?: string };
}

interface Exchanged {
  responses: { status: string; headers: string[]; body: string }[];
  rest: string;
}

interface Upgraded {
  data: string;
  ended: boolean;
}

test('the proxy forwards: pipelined requests answered in order, hop-by-hop headers dropped both ways, bodies streamed both ways, marked upstream connections, 503 when the destination refuses, WebSocket upgrades judged and tunnelled, CONNECT and h2c refused', async (t) => {
  const netns = await addNetns(t, 'cpx');
  const mark = proxyIngressMark(IDENTITY);
  // TPROXY for connections to 127.0.0.2 but the proxy's own (marked) ones, which are counted.
  const ruleset = `table ip cpx {
  chain pre {
    type filter hook prerouting priority mangle; policy accept;
    meta mark 0x${mark.toString(16)} ip daddr 127.0.0.2 tcp dport { ${SERVED}, ${REFUSED}, ${SERVED_H2} } tcp flags syn counter
    meta mark 0 ip daddr 127.0.0.2 tcp dport { ${SERVED}, ${REFUSED}, ${SERVED_H2} } tproxy to 127.0.0.1:${PROXY_PORT}
  }
}`;
  await inNs(netns, 'sh', ['-c', `printf '%s' "$0" | nft -f -`, ruleset]);
  const out = JSON.parse(await inNs(netns, process.execPath, ['--input-type=module', '-e', HARNESS, join(import.meta.dirname, 'http-proxy.ts'), join(import.meta.dirname, '..', 'policy', 'index.ts'), String(IDENTITY), String(PROXY_PORT), String(SERVED), String(REFUSED), String(SERVED_H2)], 30_000)) as Record<'pipelined' | 'refused' | 'edited' | 'connect' | 'upgrade' | 'wsDenied', Exchanged> & Record<'ws' | 'wsOld' | 'wsRefused' | 'wsAfter', Upgraded> & { wsClient: { seen: string[]; code?: number; error?: string }; upgrades: { url: string; headers: string[]; head: string }[]; stream: { status: number; chunked?: string; body: string }; grpc: H2Call; grpcDenied: H2Call; records: L7HttpRecord[] };

  const [upload, second, third] = out.pipelined.responses;
  assert.deepEqual(out.pipelined.responses.map((r) => r.status), ['HTTP/1.1 200 OK', 'HTTP/1.1 200 OK', 'HTTP/1.1 403 Forbidden'], 'three pipelined requests, answered in order');
  const echoed = JSON.parse(upload.body) as { method: string; url: string; headers: string[]; body: string };
  assert.equal(echoed.body, 'hello world', 'the chunked upload arrives whole');
  assert.deepEqual([echoed.method, echoed.url], ['POST', '/echo/upload']);
  const sent = echoed.headers.filter((_, i) => i % 2 === 0).map((h) => h.toLowerCase());
  assert.ok(sent.includes('x-keep') && sent.includes('host'), `end-to-end headers forwarded: ${sent.join(', ')}`);
  for (const hop of ['x-drop', 'keep-alive', 'te', 'proxy-authorization']) assert.ok(!sent.includes(hop), `${hop} is not forwarded: ${sent.join(', ')}`);
  assert.ok(!echoed.headers.includes('timeout=9'), 'the client\'s Keep-Alive stays with the proxy');
  assert.ok(upload.headers.includes('x-end'), 'end-to-end response headers come back');
  assert.ok(!upload.headers.includes('x-hop'), 'a response header the server\'s Connection names is dropped');
  assert.equal(JSON.parse(second.body).url, '/echo/second');
  assert.equal(third.body, 'Access denied\r\n');

  // headerMatches mismatch actions: X-Team: empire added beside rebels, X-Debug (not 0) removed,
  // X-Env set to prod whatever it held, X-Audit's absence only logged.
  assert.equal(out.edited.responses[0]?.status, 'HTTP/1.1 200 OK');
  const edited = (JSON.parse(out.edited.responses[0].body) as { headers: string[] }).headers;
  const pairs = edited.flatMap((h, i) => (i % 2 === 0 && /^x-/i.test(h) ? [`${h.toLowerCase()}: ${edited[i + 1]}`] : []));
  assert.deepEqual(pairs.sort(), ['x-env: prod', 'x-team: empire', 'x-team: rebels']);

  assert.equal(out.refused.responses[0]?.status, 'HTTP/1.1 503 Service Unavailable');
  assert.equal(out.refused.responses[0]?.body, 'upstream connect error\r\n');
  assert.equal(out.connect.responses[0]?.status, 'HTTP/1.1 403 Forbidden');
  assert.equal(out.upgrade.responses[0]?.status, 'HTTP/1.1 403 Forbidden', 'an h2c upgrade is refused');
  assert.equal(out.upgrade.responses[0]?.body, 'Access denied\r\n');

  // WebSocket: the upgrade judged as a request; allowed, the 101 relayed (Sec-WebSocket-Accept for
  // the client's key, the server's hop-by-hop Keep-Alive dropped), then bytes both ways verbatim:
  // the server's own right behind its 101, the client's right behind its request, and later ones;
  // the client's half-close reaches the server, whose last word and end come back.
  const [wsHead, wsBody] = out.ws.data.split('\r\n\r\n');
  const wsLines = wsHead.split('\r\n');
  assert.equal(wsLines[0], 'HTTP/1.1 101 Switching Protocols', out.ws.data);
  assert.deepEqual(wsLines.slice(1).map((l) => l.toLowerCase()).sort(), ['connection: upgrade', 'sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=', 'upgrade: websocket']);
  assert.equal(wsBody, 'hello;early;latebye');
  assert.equal(out.ws.ended, true, 'the half-close went through, the server\'s last word and end came back');
  const [wsSeen, oldSeen, afterSeen, ...moreSeen] = out.upgrades;
  assert.equal(afterSeen?.url, '/echo/ws-after');
  assert.equal(wsSeen?.url, '/echo/ws');
  assert.equal(wsSeen.head, '', 'the client\'s early bytes reach the server only after its 101');
  const wsSent = wsSeen.headers.flatMap((h, i) => (i % 2 === 0 ? [`${h.toLowerCase()}: ${wsSeen.headers[i + 1]}`] : []));
  assert.deepEqual(wsSent.filter((h) => !h.startsWith('host:')).sort(), ['connection: Upgrade', 'sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==', 'sec-websocket-version: 13', 'upgrade: WebSocket'], 'the upgrade headers kept, other hop-by-hop ones dropped');
  // Not switched: the server's 426 relayed as a response, its hop-by-hop headers dropped, and the
  // connection closed.
  assert.equal(oldSeen?.url, '/echo/ws-old');
  assert.match(out.wsOld.data, /^HTTP\/1\.1 426 Upgrade Required\r\n/);
  assert.ok(out.wsOld.data.endsWith('\r\n\r\nupgrade!\n'), out.wsOld.data);
  assert.doesNotMatch(out.wsOld.data, /x-hop/i);
  assert.equal(out.wsOld.ended, true);
  // The destination refuses the connection: 503, as for any request.
  assert.match(out.wsRefused.data, /^HTTP\/1\.1 503 Service Unavailable\r\n[^]*\r\n\r\nupstream connect error\r\n$/);
  assert.equal(out.wsRefused.ended, true);
  // Pipelined behind a GET: the GET's 200, then the 101 and the tunnel.
  assert.match(out.wsAfter.data, /^HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\n\{"method":"GET","url":"\/echo\/ws-before"[^]*\}HTTP\/1\.1 101 Switching Protocols\r\n[^]*\r\n\r\nhello;xbye$/);
  assert.equal(out.wsAfter.ended, true, JSON.stringify(out.wsAfter));
  // A path no rule allows: 403, never at the server.
  assert.deepEqual([out.wsDenied.responses[0]?.status, out.wsDenied.responses[0]?.body], ['HTTP/1.1 403 Forbidden', 'Access denied\r\n']);
  // A real client (Node's WebSocket): handshake checked, a frame echoed, closed cleanly.
  assert.deepEqual(out.wsClient, { seen: ['ping'], code: 1000 });
  assert.deepEqual(moreSeen.map((u) => u.url), ['/echo/ws-frames'], 'the denied upgrade never reached the server');
  assert.deepEqual(out.stream, { status: 200, chunked: 'chunked', body: 'first,second' }, 'a chunked response is streamed on');

  // HTTP/2 (gRPC): judged by the same rules, the body and the grpc-status trailer passed through,
  // te: trailers kept (gRPC needs it), the rule's mismatch edit made; another method's path 403.
  assert.equal(out.grpc.status, 200);
  assert.deepEqual(JSON.parse(out.grpc.body), { path: '/pkg.Greeter/SayHello', te: 'trailers', team: 'empire', body: '\x00\x00\x00\x00\x05hello' });
  assert.deepEqual(out.grpc.trailers, { status: '0', message: 'ok' });
  assert.deepEqual([out.grpcDenied.status, out.grpcDenied.body], [403, 'Access denied\r\n']);
  const h2records = out.records.filter((r) => r.protocol === 'HTTP/2').map((r) => [r.kind, r.verdict, r.url, r.code ?? null]);
  assert.deepEqual(h2records, [
    ['REQUEST', 'FORWARDED', `http://127.0.0.2:${SERVED_H2}/pkg.Greeter/SayHello`, null],
    ['RESPONSE', 'FORWARDED', `http://127.0.0.2:${SERVED_H2}/pkg.Greeter/SayHello`, 200],
    ['REQUEST', 'DROPPED', `http://127.0.0.2:${SERVED_H2}/pkg.Greeter/Steal`, 403],
  ]);

  // The records: each forwarded request and its response, the denial with its 403, the 503.
  const wsRecords = out.records.filter((r) => r.url.includes('/ws')).map((r) => [r.kind, r.verdict, r.method, r.url, r.code ?? null]);
  assert.deepEqual(wsRecords, [
    ['REQUEST', 'FORWARDED', 'GET', 'http://svc/echo/ws', null],
    ['RESPONSE', 'FORWARDED', 'GET', 'http://svc/echo/ws', 101],
    ['REQUEST', 'FORWARDED', 'GET', 'http://svc/echo/ws-old', null],
    ['RESPONSE', 'FORWARDED', 'GET', 'http://svc/echo/ws-old', 426],
    ['REQUEST', 'FORWARDED', 'GET', 'http://svc/echo/ws-nobody', null],
    ['RESPONSE', 'FORWARDED', 'GET', 'http://svc/echo/ws-nobody', 503],
    ['REQUEST', 'FORWARDED', 'GET', 'http://svc/echo/ws-before', null],
    ['REQUEST', 'FORWARDED', 'GET', 'http://svc/echo/ws-after', null],
    ['RESPONSE', 'FORWARDED', 'GET', 'http://svc/echo/ws-before', 200],
    ['RESPONSE', 'FORWARDED', 'GET', 'http://svc/echo/ws-after', 101],
    ['REQUEST', 'DROPPED', 'GET', 'http://svc/ws', 403],
    ['REQUEST', 'FORWARDED', 'GET', `http://127.0.0.2:${SERVED}/echo/ws-frames`, null],
    ['RESPONSE', 'FORWARDED', 'GET', `http://127.0.0.2:${SERVED}/echo/ws-frames`, 101],
  ], 'an upgrade is a request and its response; the bytes after it are no flows');
  const summary = out.records.filter((r) => r.protocol !== 'HTTP/2' && !r.url.includes('/ws')).map((r) => [r.kind, r.verdict, r.method, r.url, r.code ?? null, r.ruleKeys ?? null]);
  assert.deepEqual(summary.filter((s) => s[0] === 'REQUEST'), [
    ['REQUEST', 'FORWARDED', 'POST', 'http://svc/echo/upload', null, ['r']],
    ['REQUEST', 'FORWARDED', 'GET', 'http://svc/echo/second', null, ['r']],
    ['REQUEST', 'DROPPED', 'DELETE', 'http://svc/echo/third', 403, null],
    ['REQUEST', 'FORWARDED', 'GET', 'http://svc/echo', null, ['r']],
    ['REQUEST', 'FORWARDED', 'PUT', 'http://svc/echo/edited', null, ['r']],
    ['REQUEST', 'FORWARDED', 'GET', `http://127.0.0.2:${SERVED}/echo/stream`, null, ['r']],
  ]);
  // Pipelined requests go upstream one after the other (the POST is answered before the GET behind
  // it is asked), so their responses are recorded in order too.
  assert.deepEqual(summary.filter((s) => s[0] === 'RESPONSE').map((s) => [s[3], s[4]]), [['http://svc/echo/upload', 200], ['http://svc/echo/second', 200], ['http://svc/echo', 503], ['http://svc/echo/edited', 200], [`http://127.0.0.2:${SERVED}/echo/stream`, 200]]);
  for (const r of out.records) {
    assert.match(r.timeNs, /^1\d{18}$/, 'nanoseconds since the epoch');
    assert.deepEqual([r.source.address, r.source.identity, r.destination.address], ['127.0.0.1', IDENTITY, '127.0.0.2']);
    if (r.kind === 'RESPONSE') assert.ok(r.latencyNs! > 0 && BigInt(r.timeNs) > BigInt(out.records.find((q) => q.kind === 'REQUEST' && q.url === r.url)!.timeNs), 'a response after its request');
  }

  // The server saw the proxy's connections carry the client's identity in their mark.
  const counted = await inNs(netns, 'nft', ['list', 'chain', 'ip', 'cpx', 'pre']);
  const synPackets = Number(/tcp flags syn counter packets (\d+)/.exec(counted)?.[1]);
  assert.ok(synPackets >= 2, `marked SYNs to the server and to the refused port: ${counted}`);
});
