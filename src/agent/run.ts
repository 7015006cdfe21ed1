/**
 * Running the agent as a process: structured logs on stdout, a graceful stop on SIGTERM/SIGINT,
 * and an exit code that says whether it started.
 * @module
 */
import { pino, type Logger } from 'pino';
import { Agent } from './agent.ts';
import type { AgentModule } from './module.ts';
import type { AgentConfig } from './modules/index.ts';

export function createLogger(level: AgentConfig['logLevel'], nodeName: string): Logger {
  return pino({ level, base: { node: nodeName }, timestamp: pino.stdTimeFunctions.isoTime });
}

/** Starts an agent (of `modules`, by default all) and resolves when it has stopped after a signal. */
export async function runAgent(config: AgentConfig, modules?: readonly AgentModule[]): Promise<void> {
  const log = createLogger(config.logLevel, config.nodeName);
  const agent = new Agent(config, log, modules);
  try {
    await agent.start();
  } catch (error) {
    log.fatal({ err: error }, 'agent failed to start');
    process.exitCode = 1;
    return;
  }
  log.info({ config }, 'agent running');
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info({ signal }, 'stopping; the datapath stays in place');
      process.off('SIGTERM', onTerm);
      process.off('SIGINT', onInt);
      agent.stop().then(resolve, (error: unknown) => {
        log.error({ err: error }, 'stop failed');
        resolve();
      });
    };
    const onTerm = () => stop('SIGTERM');
    const onInt = () => stop('SIGINT');
    process.on('SIGTERM', onTerm);
    process.on('SIGINT', onInt);
  });
}
