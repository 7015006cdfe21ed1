/**
 * Masquerade for traffic from pods to the world: packets from the cluster CIDR to anything outside
 * it leave with the node's address, so the world needs no route to pod CIDRs. Cilium offers this
 * through iptables or BPF; here it is one nftables table owned by Ciliate, replaced atomically.
 * The agent keeps it with a reconciler (Masquerade): a table deleted or flushed by hand is put
 * back at the next refresh.
 * @module
 */
import { spawn } from 'node:child_process';
import type { Logger } from 'pino';
import { codedErrorFamily } from '../errors/index.ts';
import { Reconciler, Table, type ReconcilerHealth } from '../statedb/index.ts';

export const MASQUERADE_TABLE = 'ciliate';

/** nft refused a command on the masquerade table; the message carries what it printed. */
export class MasqueradeError extends codedErrorFamily<'ERR_MASQUERADE'>('masquerade') {}

/** Runs nft with `args`, `stdin` on its standard input; resolves with what it printed. */
function nft(args: readonly string[], stdin?: string): Promise<string> {
  const command = `nft ${args.join(' ')}`;
  return new Promise((resolve, reject) => {
    const child = spawn('nft', args, { stdio: [stdin === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', (error) => reject(new MasqueradeError('ERR_MASQUERADE', `${command}: ${error.message}`)));
    child.on('close', (code) => (code === 0 ? resolve(stdout) : reject(new MasqueradeError('ERR_MASQUERADE', `${command}: ${stderr.trim() || 'failed'}`))));
    // An nft that fails early closes its input: its exit status tells, not the EPIPE.
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(stdin);
  });
}

function masqueradeRule(clusterCidr: string): string {
  return `ip saddr ${clusterCidr} ip daddr != ${clusterCidr} masquerade`;
}

/**
 * Installs (or replaces) the masquerade rule for `clusterCidr` in the caller's namespace. The
 * table is declared, flushed and refilled in one nft transaction: never a moment without the rule.
 */
export async function ensureMasquerade(clusterCidr: string): Promise<void> {
  await nft(
    ['-f', '-'],
    [
      `table ip ${MASQUERADE_TABLE} {}`,
      `flush table ip ${MASQUERADE_TABLE}`,
      `table ip ${MASQUERADE_TABLE} {`,
      '  chain postrouting {',
      '    type nat hook postrouting priority srcnat; policy accept;',
      `    ${masqueradeRule(clusterCidr)}`,
      '  }',
      '}',
      '',
    ].join('\n'),
  );
}

export async function removeMasquerade(): Promise<void> {
  await nft(['-f', '-'], `table ip ${MASQUERADE_TABLE} {}\ndelete table ip ${MASQUERADE_TABLE}\n`);
}

/** Ciliate's nft table as nft lists it, or undefined when there is none. */
export async function readMasquerade(): Promise<string | undefined> {
  try {
    return await nft(['list', 'table', 'ip', MASQUERADE_TABLE]);
  } catch (error) {
    if (MasqueradeError.is(error) && /No such file or directory/.test(error.message)) return undefined;
    throw error;
  }
}

interface MasqueradeSpec {
  clusterCidr: string;
}

/**
 * The masquerade rule kept in place: installed at start, and on every refresh compared with what
 * nft lists and installed again when it is missing or different.
 */
export class Masquerade {
  readonly #table = new Table<MasqueradeSpec>('masquerade', () => MASQUERADE_TABLE);
  readonly #reconciler: Reconciler<MasqueradeSpec, string>;
  readonly #clusterCidr: string;

  constructor(options: { clusterCidr: string; log: Logger; refreshIntervalMs?: number }) {
    this.#clusterCidr = options.clusterCidr;
    this.#reconciler = new Reconciler<MasqueradeSpec, string>({
      name: 'masquerade',
      table: this.#table,
      refreshIntervalMs: options.refreshIntervalMs,
      ops: {
        update: (spec) => ensureMasquerade(spec.clusterCidr),
        delete: () => removeMasquerade(),
        list: async () => {
          const listed = await readMasquerade();
          return listed === undefined ? [] : [[MASQUERADE_TABLE, listed] as const];
        },
        equal: (spec, listed) => /hook postrouting/.test(listed) && listed.includes(masqueradeRule(spec.clusterCidr)),
      },
      onError: (_key, error, attempts) => options.log.warn({ err: error, attempts }, 'installing the masquerade rule failed; will retry'),
      onRefresh: () => options.log.info({ table: MASQUERADE_TABLE }, 'masquerade rule missing or changed; installed again'),
    });
  }

  /** Installs the rule; rejects if the first attempt fails (the reconciler goes on retrying). */
  async start(): Promise<void> {
    this.#reconciler.start();
    const revision = this.#table.upsert({ clusterCidr: this.#clusterCidr });
    await this.#reconciler.attempted(revision);
    const status = this.#reconciler.status(MASQUERADE_TABLE);
    if (status?.state === 'error') throw new MasqueradeError('ERR_MASQUERADE', `nft -f -: installing the masquerade rule: ${status.error}`);
  }

  /** Stops watching; the rule stays. */
  stop(): Promise<void> {
    return this.#reconciler.stop();
  }

  health(): ReconcilerHealth {
    return this.#reconciler.health();
  }
}
