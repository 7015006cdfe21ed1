/**
 * CNI: the plugin's logic (src/cni) behind POST /v1/cni. The plugin binary a runtime executes
 * forwards each invocation here (its CNI_* variables and stdin) and prints the answer; ADD, DEL
 * and CHECK act on this agent's endpoints in-process, as the endpoints API would.
 * @module
 */
import { z } from 'zod';
import { CNI_EXIT_HEADER, CNI_ROUTE, runCni, type CniAgent } from '../../cni/index.ts';
import { CodedError } from '../../errors/index.ts';
import { parseRequest } from '../api-errors.ts';
import { RawReply } from '../api-server.ts';
import { containerInterfaceKey } from '../endpoint.ts';
import { defineModule } from '../module.ts';
import { EndpointsCell, NodeCell } from './cells.ts';
import { AddEndpointBody } from './endpoints.ts';

/** What the plugin binary sends: the CNI_* variables it found set, and stdin as it read it. The server bounds the whole body. */
const CniRequestBody = z
  .object({
    env: z
      .object({
        CNI_COMMAND: z.string().optional(),
        CNI_CONTAINERID: z.string().optional(),
        CNI_NETNS: z.string().optional(),
        CNI_IFNAME: z.string().optional(),
        CNI_ARGS: z.string().optional(),
        CNI_PATH: z.string().optional(),
      })
      .strict(),
    stdin: z.string(),
  })
  .strict();

export const cniModule = defineModule({
  name: 'cni',
  description: "the CNI plugin's logic behind POST /v1/cni, which the installed plugin binary forwards each invocation to",
  needs: { endpoints: EndpointsCell, node: NodeCell },
  start({ endpoints, node }, { log, api }) {
    // A failure the agent did not mean (no coded error) is a bug to look into, not only the runtime's error.
    const logged = async <T>(what: string, call: () => Promise<T>): Promise<T> => {
      try {
        return await call();
      } catch (error) {
        if (!CodedError.is(error)) log.error({ err: error }, `CNI ${what} failed`);
        throw error;
      }
    };
    const agent: CniAgent = {
      add: (request) => logged('ADD', () => endpoints.add(parseRequest(AddEndpointBody, request, 'endpoint request'))),
      delete: (containerId, ifname) => logged('DEL', () => endpoints.delete(containerId, ifname)),
      endpoint: (containerId, ifname) => {
        const endpoint = endpoints.table.get(containerInterfaceKey(containerId, ifname));
        // The key joins the two with "/": a container id holding one must not find another's interface.
        return endpoint?.containerId === containerId && endpoint.ifname === ifname ? endpoint : undefined;
      },
      check: (containerId, ifname) => logged('CHECK', () => endpoints.check(containerId, ifname)),
      routerIp: () => node.record.routerIp,
    };
    api.route('POST', CNI_ROUTE, async ({ body }) => {
      const { env, stdin } = parseRequest(CniRequestBody, body, 'CNI request');
      const { stdout, exitCode } = await runCni(env, stdin, agent);
      return new RawReply(200, stdout, { 'content-type': 'application/json', [CNI_EXIT_HEADER]: String(exitCode) });
    });
    return { value: undefined };
  },
});
