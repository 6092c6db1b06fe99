import type { IncomingMessage, ServerResponse } from 'node:http';
import { AetherError, type Logger } from '../core/index.ts';
import type { Runtime } from '../runtime/index.ts';
import type { Endpoint, SandboxKind } from '../spec/index.ts';
import { AgentCore } from './core/index.ts';
import { FunctionsController } from './functions/controller.ts';
import { handleAgentHttp, handleTrustedForward } from './http.ts';
import type { LogEntry } from './logs.ts';
import type { Agent, AgentDeps, AgentForwardOptions, AgentForwardTarget, LocalInstanceInfo } from './types.ts';

/**
 * The agent of one node: the core (lease and record, one capacity ledger, runtimes, instance
 * supervision, logs) with the functions controller on it, and any other workload controller
 * (services) registered on `core` before start().
 */
class AgentImpl implements Agent {
  readonly id: string;
  readonly core: AgentCore;
  readonly #fns: FunctionsController;
  readonly #d: AgentDeps;
  readonly #httpFollowers = new Set<ServerResponse>();
  #started = false;
  #stopping: Promise<void> | undefined;

  constructor(deps: AgentDeps) {
    this.#d = deps;
    this.id = deps.config.agentId;
    const runtimes: Partial<Record<SandboxKind, Runtime>> = { ...(deps.runtime ? { process: deps.runtime } : {}), ...deps.runtimes };
    this.core = new AgentCore({ store: deps.store, clock: deps.clock, logger: deps.logger, config: deps.config, runtimes });
    this.#fns = new FunctionsController(deps, this.core);
    this.core.register(this.#fns);
  }

  async start(): Promise<void> {
    if (this.#started) throw new AetherError('AETHER_ERR_INTERNAL', 'agent already started');
    this.#started = true;
    await this.core.start();
    const { logger, config } = this.#d;
    const sandboxes = Object.fromEntries(this.core.runtimes.map(([k, rt]) => [k, rt.isolation]));
    logger.info({ agent: this.id, url: config.url, sandboxes, capacity: config.capacity }, 'agent started');
  }

  stop(): Promise<void> {
    if (!this.#started) return Promise.resolve();
    this.#stopping ??= (async () => {
      await this.core.stop();
      for (const res of this.#httpFollowers) res.end();
      this.#httpFollowers.clear();
      this.#d.logger.info({ agent: this.id }, 'agent stopped');
    })();
    return this.#stopping;
  }

  forward(instanceId: string, req: IncomingMessage, res: ServerResponse, target: AgentForwardTarget, opts?: AgentForwardOptions): Promise<{ status: number }> {
    return this.#fns.forward(instanceId, req, res, target, opts);
  }

  noteExternalLoad(instanceId: string, inflight: number, active: boolean, routed: boolean): void {
    this.#fns.noteExternalLoad(instanceId, inflight, active, routed);
  }

  handleHttp(req: IncomingMessage, res: ServerResponse): void {
    handleAgentHttp(this, this.#d.config.clusterToken, this.#httpFollowers, req, res, this.#d.logger as Logger);
  }

  handleTrustedForward(req: IncomingMessage, res: ServerResponse): void {
    handleTrustedForward(this, req, res, this.#d.logger);
  }

  routableInstances(): { id: string; endpoint: Endpoint }[] {
    return this.#fns.routableInstances();
  }

  onRoutableChange(listener: () => void): () => void {
    return this.#fns.onRoutableChange(listener);
  }

  tailLogs(fnId: string, n: number): LogEntry[] {
    return this.#fns.tailLogs(fnId, n);
  }

  followLogs(fnId: string, onEntry: (e: LogEntry) => void): () => void {
    return this.#fns.followLogs(fnId, onEntry);
  }

  localInstances(): LocalInstanceInfo[] {
    return this.#fns.localInstances();
  }
}

export function createAgent(deps: AgentDeps): Agent {
  return new AgentImpl(deps);
}
