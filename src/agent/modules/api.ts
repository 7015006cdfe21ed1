/**
 * The local API: JSON over HTTP on a root-only Unix socket, serving the routes every module
 * added, once every module has started.
 * @module
 */
import { z } from 'zod';
import { defineModule } from '../module.ts';
import { ApiServerCell } from './cells.ts';

export const apiConfig = {
  socketPath: z.string().min(1).default('/var/run/ciliate/ciliate.sock').describe('the API socket (JSON over HTTP, root only)'),
};

export const apiModule = defineModule({
  name: 'api',
  description: 'the local API on a root-only Unix socket',
  config: apiConfig,
  needs: { server: ApiServerCell },
  start({ server }, { config, log, onReady }) {
    // Serving starts when every route is in place: no client meets a half-started agent.
    onReady(async () => {
      await server.listen(config.socketPath);
      log.info({ socket: config.socketPath }, 'API listening');
    });
    return { value: undefined, stop: () => server.close() };
  },
});
