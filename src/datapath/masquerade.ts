/**
 * Masquerade for traffic from pods to the world: packets from the cluster CIDR to anything outside
 * it leave with the node's address, so the world needs no route to pod CIDRs. Cilium offers this
 * through iptables or BPF; here it is one nftables table owned by Ciliate, replaced atomically.
 * @module
 */
import { spawn } from 'node:child_process';

export const MASQUERADE_TABLE = 'ciliate';

/** nft refused the masquerade table; the message carries what it printed. */
export class MasqueradeError extends Error {
  readonly code = 'ERR_MASQUERADE';
  constructor(message: string) {
    super(message);
    this.name = 'MasqueradeError';
  }
}

function nft(script: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('nft', ['-f', '-'], { stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', (error) => reject(new MasqueradeError(`nft -f -: ${error.message}`)));
    child.on('close', (code) => (code === 0 ? resolve() : reject(new MasqueradeError(`nft -f -: ${stderr.trim() || 'failed'}`))));
    child.stdin.end(script);
  });
}

/**
 * Installs (or replaces) the masquerade rule for `clusterCidr` in the caller's namespace. The
 * table is declared, flushed and refilled in one nft transaction: never a moment without the rule.
 */
export function ensureMasquerade(clusterCidr: string): Promise<void> {
  return nft(
    [
      `table ip ${MASQUERADE_TABLE} {}`,
      `flush table ip ${MASQUERADE_TABLE}`,
      `table ip ${MASQUERADE_TABLE} {`,
      '  chain postrouting {',
      '    type nat hook postrouting priority srcnat; policy accept;',
      `    ip saddr ${clusterCidr} ip daddr != ${clusterCidr} masquerade`,
      '  }',
      '}',
      '',
    ].join('\n'),
  );
}

export async function removeMasquerade(): Promise<void> {
  await nft(`table ip ${MASQUERADE_TABLE} {}\ndelete table ip ${MASQUERADE_TABLE}\n`);
}
