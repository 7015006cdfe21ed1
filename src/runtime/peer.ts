/**
 * Who is on the other end of a loopback TCP connection: the uid owning the client's socket, from
 * /proc/net/tcp{,6} (the kernel's own table). Tetragon's API listens on localhost:54321 without
 * authentication, so any local user could load a policy there; Ciliate lets only root change
 * policies (a Sigkill policy kills any process, and any policy reads others' syscalls).
 * @module
 */
import { readFileSync } from 'node:fs';

/** `127.0.0.1:40000`, `[::1]:40000` or `ipv4:127.0.0.1:40000` (grpc-js peers) → address and port. */
function parsePeer(peer: string): { address: string; port: number } | undefined {
  const match = /^(?:ipv[46]:)?\[?([0-9a-fA-F.:]+?)\]?:(\d+)$/.exec(peer);
  return match ? { address: match[1], port: Number(match[2]) } : undefined;
}

/** The kernel's hex form of an address in /proc/net/tcp (each 32-bit word in host order, LE). */
function procHex(address: string): string[] {
  const v4 = /^(?:::ffff:)?(\d+)\.(\d+)\.(\d+)\.(\d+)$/i.exec(address);
  if (v4) {
    const bytes = v4.slice(1).map(Number);
    const word = bytes.reverse().map((b) => b.toString(16).padStart(2, '0')).join('').toUpperCase();
    // An IPv4 client may sit in tcp (plain) or tcp6 (mapped on a dual-stack listener).
    return [word, `0000000000000000FFFF0000${word}`];
  }
  if (address === '::1') return ['00000000000000000000000001000000'];
  return [];
}

/** The uid owning the client socket of a loopback TCP peer, or undefined when it is not found. */
export function loopbackPeerUid(peer: string): number | undefined {
  const parsed = parsePeer(peer);
  if (!parsed) return undefined;
  const port = parsed.port.toString(16).padStart(4, '0').toUpperCase();
  const locals = new Set(procHex(parsed.address).map((hex) => `${hex}:${port}`));
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text: string;
    try {
      text = readFileSync(table, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/);
      // sl, local, remote, state (01 established), queues, timer, retransmits, uid.
      if (fields.length > 7 && fields[3] === '01' && locals.has(fields[1])) return Number(fields[7]);
    }
  }
  return undefined;
}
