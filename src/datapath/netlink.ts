/**
 * Network configuration through iproute2, run asynchronously so the agent's event loop never
 * waits on a child process. Commands for one namespace go through one `ip -batch` process.
 * @module
 */
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { codedErrorFamily } from '../errors/index.ts';

const execFileAsync = promisify(execFile);

export class NetlinkError extends codedErrorFamily<'ERR_NETLINK'>('netlink') {
  readonly command: string;
  /** For a batch: the 1-based line that failed (the lines before it took effect). */
  readonly failedLine: number | undefined;
  constructor(command: string, stderr: string) {
    super('ERR_NETLINK', `${command}: ${stderr.trim() || 'failed'}`);
    this.command = command;
    const failed = /Command failed -:(\d+)/.exec(stderr);
    this.failedLine = failed ? Number(failed[1]) : undefined;
  }
}

/** `ip ARGS` in the agent's namespace, or in the namespace file `netns` (via nsenter). */
export async function ip(args: readonly string[], netns?: string): Promise<string> {
  const [command, argv] = netns ? ['nsenter', [`--net=${netns}`, 'ip', ...args]] : ['ip', [...args]];
  try {
    const { stdout } = await execFileAsync(command, argv, { encoding: 'utf8' });
    return stdout;
  } catch (error) {
    throw new NetlinkError(`ip ${args.join(' ')}${netns ? ` (in ${netns})` : ''}`, (error as { stderr?: string }).stderr ?? String(error));
  }
}

/**
 * Several `ip` commands (one per line, without the leading `ip`) in one process. Stops at the first
 * failure. Resolves with what they printed: with `json`, each `show` prints one JSON array per line.
 */
export function ipBatch(lines: readonly string[], netns?: string, options: { json?: boolean } = {}): Promise<string> {
  const ipArgs = [...(options.json ? ['-j'] : []), '-batch', '-'];
  const [command, argv] = netns ? ['nsenter', [`--net=${netns}`, 'ip', ...ipArgs]] : ['ip', ipArgs];
  return new Promise((resolve, reject) => {
    const child = spawn(command, argv, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', (error) => reject(new NetlinkError(`ip -batch${netns ? ` (in ${netns})` : ''}`, error.message)));
    child.on('close', (code) => {
      if (code === 0) resolve(stdout);
      else reject(new NetlinkError(`ip -batch${netns ? ` (in ${netns})` : ''} [${lines.join('; ')}]`, stderr));
    });
    child.stdin.end(`${lines.join('\n')}\n`);
  });
}

export interface LinkDetails {
  ifindex: number;
  name: string;
  mac: string;
}

/** A link's index and MAC, or undefined when it does not exist. */
export async function linkDetails(name: string, netns?: string): Promise<LinkDetails | undefined> {
  let out: string;
  try {
    out = await ip(['-j', 'link', 'show', 'dev', name], netns);
  } catch (error) {
    if (error instanceof NetlinkError && /does not exist|Cannot find device/.test(error.message)) return undefined;
    throw error;
  }
  return parseLinks(out)[0];
}

/**
 * The link a JSON `ip -batch` shows last: batches that create and configure a link end with
 * `link show dev NAME`, which saves a process per link compared with a separate linkDetails().
 */
export function lastShownLink(batchOutput: string, context: string): LinkDetails {
  const lines = batchOutput.trim().split('\n');
  const link = parseLinks(lines[lines.length - 1] ?? '')[0];
  if (!link) throw new NetlinkError(context, `printed no link (${JSON.stringify(batchOutput.slice(0, 200))})`);
  return link;
}

function parseLinks(json: string): LinkDetails[] {
  let links: { ifindex: number; ifname: string; address: string }[];
  try {
    links = JSON.parse(json) as typeof links;
  } catch {
    return [];
  }
  return links.map((link) => ({ ifindex: link.ifindex, name: link.ifname, mac: link.address }));
}

export async function sysctl(key: string, value: string, netns?: string): Promise<void> {
  const args = ['-q', '-w', `${key}=${value}`];
  const [command, argv] = netns ? ['nsenter', [`--net=${netns}`, 'sysctl', ...args]] : ['sysctl', args];
  try {
    await execFileAsync(command, argv);
  } catch (error) {
    throw new NetlinkError(`sysctl ${key}=${value}`, (error as { stderr?: string }).stderr ?? String(error));
  }
}
