/**
 * Identities: the store-backed allocator every node shares, its API, and the garbage collection
 * of identities no node references any more.
 * @module
 */
import { z } from 'zod';
import { IdentityAllocator, IdentityError, identityName, reservedIdentities, type Identity } from '../../identity/index.ts';
import { IdentityGc } from '../identity-gc.ts';
import { defineModule } from '../module.ts';
import { EndpointsCell, IdentitiesCell, StoreCell } from './cells.ts';


export const identitiesModule = defineModule({
  name: 'identities',
  description: 'security identities from labels, allocated through the state store',
  needs: { store: StoreCell },
  provides: IdentitiesCell,
  async start({ store }, { config, api }) {
    const identities = new IdentityAllocator({ store, nodeName: config.nodeName });
    await identities.start();
    api.route('GET', '/v1/identities', () => [...reservedIdentities(), ...identities.list()].map(identityView));
    api.route('GET', '/v1/identities/:id', ({ params }) => {
      const identity = identities.get(Number(params.id));
      if (!identity) throw new IdentityError('ERR_IDENTITY_NOT_FOUND', `no identity ${params.id}`);
      return identityView(identity);
    });
    return { value: identities, stop: () => identities.stop() };
  },
});

export const identityGcConfig = {
  /**
   * Every node runs the passes, and they are safe to run together: a node's references stay in
   * the store while its agent is down, and the delete fails if any node takes a reference
   * meanwhile. 15 minutes, as Cilium's identity-gc-interval.
   */
  identityGcInterval: z
    .number()
    .min(0)
    .refine((s) => s === 0 || s >= 0.1, 'must be 0 (off) or at least 0.1 seconds')
    .default(900)
    .describe('seconds between identity garbage-collection passes, which delete identities no node references (0: off)'),
  /**
   * So a pod re-created with the same labels (a rollout, a restart) gets its number back instead
   * of a policy recomputation on every node.
   */
  identityGcGracePeriod: z.number().min(0).default(300).describe('seconds an unreferenced identity is kept before it is collected'),
};

export const identityGcModule = defineModule({
  name: 'identity-gc',
  description: 'garbage collection of identities no node references',
  config: identityGcConfig,
  // After the endpoints: a restarted agent has re-taken its references by then (collecting
  // before would be safe too, as the previous run's references are still in the store).
  needs: { identities: IdentitiesCell, endpoints: EndpointsCell },
  start({ identities }, { config, log }) {
    const gc = new IdentityGc({
      identities,
      intervalMs: config.identityGcInterval * 1000,
      gracePeriodMs: config.identityGcGracePeriod * 1000,
      log,
    });
    gc.start();
    return { value: undefined, stop: () => gc.stop(), status: () => ({ identityGc: gc.status() }) };
  },
});

function identityView(identity: Pick<Identity, 'id' | 'labels'>) {
  return { id: identity.id, name: identityName(identity.id), labels: identity.labels.toStrings() };
}
