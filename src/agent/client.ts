/**
 * A client of the agent's Unix-socket API, for the CLI and tests. (The CNI plugin binary speaks
 * to the API on its own: src/cni/shim/ciliate-cni.c.)
 *
 * Requests go through src/agent/unix-http.ts on node:net; node:http is loaded only for the
 * monitor's stream, so a CLI command that does not follow one stays light.
 * @module
 */
import { codedErrorFamily } from '../errors/index.ts';
import { UnixHttpError, unixHttpRequest, type UnixHttpResponse } from './unix-http.ts';

/**
 * What the agent answered with an error status (its `error.code`, whichever family raised it on
 * the agent's side), or why it could not be asked (`status` 0: ERR_AGENT_UNREACHABLE, ERR_TIMEOUT).
 */
export class AgentApiError extends codedErrorFamily<string>('agent-api') {
  readonly status: number;
  constructor(status: number, code: string, message: string) {
    super(code, message);
    this.status = status;
  }
}

export const DEFAULT_SOCKET = '/var/run/ciliate/ciliate.sock';

export class AgentClient {
  readonly socketPath: string;
  readonly timeoutMs: number;

  constructor(socketPath: string = process.env.CILIATE_SOCKET_PATH ?? DEFAULT_SOCKET, timeoutMs = 30_000) {
    this.socketPath = socketPath;
    this.timeoutMs = timeoutMs;
  }

  get<T>(path: string): Promise<T> {
    return this.call<T>('GET', path);
  }

  /** GETs a streaming route: calls `onItem` per JSON line until the stream ends or `signal` aborts. */
  async stream<T>(path: string, onItem: (item: T) => void, signal?: AbortSignal): Promise<void> {
    const { request } = await import('node:http');
    return new Promise<void>((resolve, reject) => {
      const req = request({ socketPath: this.socketPath, path, method: 'GET', signal }, (res) => {
        if ((res.statusCode ?? 500) >= 400) {
          reject(new AgentApiError(res.statusCode ?? 500, 'ERR_AGENT', `agent answered ${res.statusCode} to GET ${path}`));
          res.resume();
          return;
        }
        let pending = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          pending += chunk;
          let newline: number;
          while ((newline = pending.indexOf('\n')) >= 0) {
            const line = pending.slice(0, newline);
            pending = pending.slice(newline + 1);
            if (line) onItem(JSON.parse(line) as T);
          }
        });
        res.on('end', () => resolve());
        res.on('error', () => resolve());
      });
      req.on('error', (error: NodeJS.ErrnoException) => {
        if (error.name === 'AbortError') resolve();
        else reject(new AgentApiError(0, 'ERR_AGENT_UNREACHABLE', `cannot reach the agent at ${this.socketPath}: ${error.code ?? error.message}`));
      });
      req.end();
    });
  }

  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    let response: UnixHttpResponse;
    try {
      response = await unixHttpRequest({ socketPath: this.socketPath, method, path, body: body === undefined ? undefined : JSON.stringify(body), timeoutMs: this.timeoutMs });
    } catch (error) {
      if (!(error instanceof UnixHttpError)) throw error;
      if (error.code === 'ETIMEDOUT') throw new AgentApiError(0, 'ERR_TIMEOUT', `agent did not answer ${method} ${path} within ${this.timeoutMs} ms`);
      if (error.code === 'ERR_BAD_RESPONSE') throw new AgentApiError(0, 'ERR_BAD_RESPONSE', `agent answered ${method} ${path} with ${error.message}`);
      if (error.code === 'ENOENT' || error.code === 'ECONNREFUSED') {
        throw new AgentApiError(0, 'ERR_AGENT_UNREACHABLE', `cannot reach the agent at ${this.socketPath}: is \`ciliate agent\` running? (${error.code})`);
      }
      throw new AgentApiError(0, 'ERR_AGENT_UNREACHABLE', `talking to the agent at ${this.socketPath}: ${error.message}`);
    }
    const { status, text } = response;
    let value: unknown;
    try {
      value = text ? JSON.parse(text) : {};
    } catch {
      throw new AgentApiError(status, 'ERR_BAD_RESPONSE', `agent answered ${method} ${path} with non-JSON: ${text.slice(0, 200)}`);
    }
    if (status >= 400) {
      const error = (value as { error?: { code?: string; message?: string } }).error;
      throw new AgentApiError(status, error?.code ?? 'ERR_AGENT', error?.message ?? `agent answered ${status}`);
    }
    return value as T;
  }
}
