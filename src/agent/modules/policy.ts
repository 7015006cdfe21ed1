/**
 * Network policy: the policy manager (policies from the store, identities, per-endpoint policy
 * maps), the datapath monitor whose verdicts name the deciding rule, and the node's published
 * policy status behind cluster-wide `policy wait`.
 * @module
 */
import {
  DEFAULT_MONITOR_AGGREGATION,
  DEFAULT_MONITOR_AGGREGATION_FLAGS,
  DEFAULT_MONITOR_AGGREGATION_INTERVAL,
  EndpointPolicyMaps,
  ensureMonitorConfig,
  MAX_MONITOR_AGGREGATION_INTERVAL,
  MONITOR_AGGREGATION_FLAG_NAMES,
  MONITOR_AGGREGATION_LEVELS,
  openMonitorConfigMap,
  parseMonitorAggregationLevel,
  RUNTIME_MONITOR_OPTION,
  type MonitorAggregationConfig,
} from '../../datapath/index.ts';
import { RequestError } from '../api-errors.ts';
import { ruleKey } from '../../policy/index.ts';
import { z } from 'zod';
import { defineModule } from '../module.ts';
import { EndpointsCell, IdentitiesCell, IpcacheCell, MonitorCell, NodeCell, PolicyCell, StoreCell } from './cells.ts';
import { Monitor, type MonitorEvent } from '../monitor.ts';
import { registerPolicyRoutes } from '../policy-api.ts';
import { PolicyManager } from '../policy-manager.ts';
import { PolicyStatus } from '../policy-status.ts';


export const policyConfig = {
  /** Cilium's bpf-policy-map-max. An endpoint whose policy needs more is retried and makes the agent degraded. */
  policyMapMaxEntries: z.number().int().min(1).max(1 << 20).default(16384).describe("entries of each endpoint's policy map"),
  policyMapSpares: z
    .number()
    .int()
    .min(0)
    .max(64)
    .default(4)
    .describe("empty policy maps kept installed ahead, while no add is in flight, for the ids the next endpoint adds will get, so that an add skips the outer-map write (an RCU grace period, ~15 ms); 0: none"),
};

export const policyModule = defineModule({
  name: 'policy',
  description: 'L3/L4 network policy: rules from the store, resolved per endpoint into policy maps',
  config: policyConfig,
  needs: { store: StoreCell, identities: IdentitiesCell, ipcache: IpcacheCell },
  provides: PolicyCell,
  async start({ store, identities, ipcache }, { config, log }) {
    const maps = new EndpointPolicyMaps(config.bpfRoot, { maxEntries: config.policyMapMaxEntries, spares: config.policyMapSpares });
    const policy = new PolicyManager({ store, identities, ipcache, maps, log, refreshIntervalMs: config.reconcileRefreshInterval * 1000 });
    try {
      await policy.start();
    } catch (error) {
      maps.close();
      throw error;
    }
    return {
      value: policy,
      stop: async () => {
        await policy.stop();
        await maps.settled();
        maps.close();
      },
      status: () => ({ policy: { revision: policy.revision, rules: policy.list().length } }),
      reconcilers: () => [policy.health()],
    };
  },
});

export const monitorConfig = {
  monitorAggregation: z
    .enum(MONITOR_AGGREGATION_LEVELS)
    .default(DEFAULT_MONITOR_AGGREGATION)
    .describe(
      "traces the datapath sends (Cilium's monitor-aggregation): none (every packet at every point), lowest/low (none where packets are received), medium (a connection's news only: opening, first reply, new TCP flags, close, each interval), maximum (as medium); drops and policy verdicts always",
    ),
  monitorAggregationFlags: z
    .array(z.enum(MONITOR_AGGREGATION_FLAG_NAMES))
    .default([...DEFAULT_MONITOR_AGGREGATION_FLAGS])
    .describe("TCP flags whose first sighting in a direction of a connection is traced at medium and above, comma-separated: syn, fin, rst, psh, ack, urg, ece, cwr or all (Cilium's monitor-aggregation-flags)"),
  monitorAggregationInterval: z
    .number()
    .int()
    .min(1)
    .max(MAX_MONITOR_AGGREGATION_INTERVAL)
    .default(DEFAULT_MONITOR_AGGREGATION_INTERVAL)
    .describe("seconds after which an active connection's direction is traced again at medium and above (Cilium's monitor-aggregation-interval)"),
};

export const monitorModule = defineModule({
  name: 'monitor',
  description: 'datapath events (drops, traces, policy verdicts naming their rule) and how many traces the datapath sends',
  config: monitorConfig,
  needs: { policy: PolicyCell },
  provides: MonitorCell,
  start({ policy }, { config, log, api }) {
    // Changed at run time by PATCH /v1/config (`ciliate config MonitorAggregationLevel=…`), which
    // the drift repair below then keeps; a restart goes back to the flags, as Cilium's does.
    let aggregation: MonitorAggregationConfig = { level: config.monitorAggregation, flags: config.monitorAggregationFlags, intervalSeconds: config.monitorAggregationInterval };
    // The node's programs read it per packet: no reload, and endpoints attached by an earlier
    // agent follow at once. Checked again on the refresh interval, so a stray write is undone.
    const aggregationMap = openMonitorConfigMap(config.bpfRoot);
    let monitor: Monitor;
    try {
      ensureMonitorConfig(aggregationMap, aggregation);
      monitor = new Monitor(
        config.bpfRoot,
        {
          ruleForCookie: (cookie) => {
            const rule = policy.engine.ruleById(cookie);
            return rule && ruleKey(rule);
          },
        },
        log,
      );
    } catch (error) {
      aggregationMap.close();
      throw error;
    }
    const repair = () => {
      try {
        if (ensureMonitorConfig(aggregationMap, aggregation)) log.warn({ aggregation }, 'monitor aggregation in the kernel had drifted; rewritten');
      } catch (error) {
        log.warn({ err: error }, 'checking the monitor aggregation in the kernel failed');
      }
    };
    const repairTimer = config.reconcileRefreshInterval > 0 ? setInterval(repair, config.reconcileRefreshInterval * 1000).unref() : undefined;
    monitor.start();
    api.route('GET', '/v1/monitor', ({ query, signal }) => {
      const kinds = query.getAll('type');
      const wanted = (e: MonitorEvent) => kinds.length === 0 || kinds.includes(e.kind);
      if (query.get('follow') === 'true') {
        return (async function* () {
          for (const event of monitor.recent(Number(query.get('last') ?? 0))) if (wanted(event)) yield event;
          for await (const event of monitor.follow(signal)) if (wanted(event)) yield event;
        })();
      }
      return monitor.recent(Number(query.get('last') ?? 100)).filter(wanted);
    });
    const runtimeOptions = () => ({ [RUNTIME_MONITOR_OPTION]: aggregation.level });
    api.route('GET', '/v1/config', runtimeOptions);
    api.route('PATCH', '/v1/config', ({ body }) => {
      const options = (body as { options?: unknown } | undefined)?.options;
      if (typeof options !== 'object' || options === null || Array.isArray(options)) {
        throw new RequestError('ERR_BAD_REQUEST', 'config: field options: want an object of Option: value');
      }
      // Every option checked before anything is written: a bad one changes nothing.
      let level: MonitorAggregationConfig['level'] | undefined;
      for (const [name, value] of Object.entries(options)) {
        if (name !== RUNTIME_MONITOR_OPTION) {
          throw new RequestError('ERR_BAD_REQUEST', `config: ${name} is not an option that changes at run time (options: ${RUNTIME_MONITOR_OPTION})`);
        }
        level = parseMonitorAggregationLevel(value);
        if (!level) throw new RequestError('ERR_BAD_REQUEST', `config: ${name}: ${JSON.stringify(value)} is not a level (${MONITOR_AGGREGATION_LEVELS.join(', ')})`);
      }
      if (level && level !== aggregation.level) {
        const next = { ...aggregation, level };
        ensureMonitorConfig(aggregationMap, next);
        aggregation = next;
        log.info({ aggregation: level }, 'monitor aggregation changed');
      }
      return runtimeOptions();
    });
    return {
      value: monitor,
      stop: () => {
        clearInterval(repairTimer);
        aggregationMap.close();
        monitor.stop();
      },
      status: () => ({ monitor: { aggregation: aggregation.level, aggregationFlags: aggregation.flags, aggregationInterval: aggregation.intervalSeconds } }),
    };
  },
});

export const policyStatusModule = defineModule({
  name: 'policy-status',
  description: 'the policy revision this node enforces, published for cluster-wide waits; the policy API',
  // After the endpoints: a restarted agent claims a revision only once its endpoints' maps are
  // adopted again.
  needs: { store: StoreCell, node: NodeCell, policy: PolicyCell, endpoints: EndpointsCell },
  start({ store, node, policy, endpoints }, { config, log, api }) {
    const status = new PolicyStatus({ store, nodeName: config.nodeName, startedAt: node.record.startedAt, policy, log });
    status.start();
    registerPolicyRoutes(api, policy, endpoints, status);
    return { value: undefined, stop: () => status.stop() };
  },
});
