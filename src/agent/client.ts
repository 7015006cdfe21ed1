/**
 * A client of the agent's Unix-socket API, for the CLI and the CNI plugin.
 * @module
 */
import { request } from 'node:http';
import { codedErrorFamily } from '../errors/index.ts';

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
  stream<T>(path: string, onItem: (item: T) => void, signal?: AbortSignal): Promise<void> {
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

  call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    return new Promise<T>((resolve, reject) => {
      const req = request(
        {
          socketPath: this.socketPath,
          path,
          method,
          timeout: this.timeoutMs,
          headers: payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {},
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (chunk: Buffer) => chunks.push(chunk));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let value: unknown;
            try {
              value = text ? JSON.parse(text) : {};
            } catch {
              reject(new AgentApiError(res.statusCode ?? 0, 'ERR_BAD_RESPONSE', `agent answered ${method} ${path} with non-JSON: ${text.slice(0, 200)}`));
              return;
            }
            if ((res.statusCode ?? 500) >= 400) {
              const error = (value as { error?: { code?: string; message?: string } }).error;
              reject(new AgentApiError(res.statusCode ?? 500, error?.code ?? 'ERR_AGENT', error?.message ?? `agent answered ${res.statusCode}`));
            } else resolve(value as T);
          });
        },
      );
      req.on('timeout', () => req.destroy(new AgentApiError(0, 'ERR_TIMEOUT', `agent did not answer ${method} ${path} within ${this.timeoutMs} ms`)));
      req.on('error', (error: NodeJS.ErrnoException) => {
        if (error instanceof AgentApiError) reject(error);
        else if (error.code === 'ENOENT' || error.code === 'ECONNREFUSED') {
          reject(new AgentApiError(0, 'ERR_AGENT_UNREACHABLE', `cannot reach the agent at ${this.socketPath}: is \`ciliate agent\` running? (${error.code})`));
        } else reject(new AgentApiError(0, 'ERR_AGENT_UNREACHABLE', `talking to the agent at ${this.socketPath}: ${error.message}`));
      });
      if (payload) req.write(payload);
      req.end();
    });
  }
}
