import { writeFile, rename, mkdir, readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { silentLogger, systemClock, type Clock, type Logger, type TimerHandle } from '../core/index.ts';
import { KEYS, type AgentRecord } from '../spec/index.ts';
import { listAndWatch, type Informer, type Store, type TxnOp, type TxnCompare } from '../store/index.ts';
import type { SchedNode, Unplaced } from '../scheduler/index.ts';
import type { ServiceConfig } from './enrich.ts';
import type { RepoFile, SpecError } from './format.ts';
import { renderNodeConfig } from './nodeconfig.ts';
import { planDeploy, type Assignments, type Change } from './plan.ts';
import type { SpecSource } from './source.ts';

/** One revisioned document per node under /aether/assignments/<node>. */
export interface ServiceAssignment {
  node: string;
  /** Spec revision (commit hash or directory digest) these services come from. */
  revision: string;
  services: ServiceConfig[];
  written_at: string;
}

export interface DeployStatus {
  revision: string | null;
  ok: boolean;
  errors: SpecError[];
  warnings: SpecError[];
  unplaced: Unplaced[];
  changes: Change[];
  source: string;
  at: string;
}

export interface DeployerOptions {
  store: Store;
  source: SpecSource;
  deployerId: string;
  clock?: Clock;
  logger?: Logger;
  /** How often the source is read (firework: 30 s; the webhook triggers a read at once). */
  pollMs?: number;
  /** Also write firework's nodes/<node>.yaml files here (atomic renames), for firework tools. */
  exportDir?: string;
  leaseTtlMs?: number;
  /**
   * While a service waits for room (unplaced for capacity, or placed on a node that does not run
   * it), a change in an agent's record (functions scaled down, a service admitted) re-plans from
   * the last specs read, at most this often (default 2 s; the source is not read again).
   */
  replanMs?: number;
}

/** Scheduler nodes from agent records: capacity, and what function instances hold / which services run there when the agent says. */
export function nodesFromAgents(agents: readonly AgentRecord[]): SchedNode[] {
  return agents.map((a) => {
    const f = a.functions_used;
    return {
      name: a.agent_id,
      node_type: a.node_type ?? null,
      capacity: { vcpus: a.capacity.vcpu, memory_mb: a.capacity.memory_mb, instances: a.capacity.instances },
      ...(f ? { other_used: { vcpus: f.vcpu, memory_mb: f.memory_mb, instances: f.instances } } : {}),
      ...(a.services_charged ? { running: a.services_charged } : {}),
      host_ip: agentHostIp(a),
    };
  });
}

/** The node's address as gateways reach its agent (--advertise); `aether up`'s in-process agent is this host. */
export function agentHostIp(a: AgentRecord): string {
  try {
    const u = new URL(a.url);
    if (u.protocol === 'http:' || u.protocol === 'https:') return u.hostname.replace(/^\[|\]$/g, '');
  } catch {
    // not a URL
  }
  return '127.0.0.1';
}

/**
 * The deployer loop: read specs -> enrich -> schedule on live agents -> write changed node
 * assignments in one transaction. One deployer leads (leader key under its lease); others wait.
 * It runs again on every poll, on a webhook, and whenever the set of live agents changes (a node
 * whose lease expired has its services moved).
 */
export class Deployer {
  readonly #o: DeployerOptions;
  readonly #clock: Clock;
  readonly #log: Logger;
  #timer: TimerHandle | undefined;
  #running: Promise<DeployStatus | null> | undefined;
  #again = false;
  #stopped = false;
  #lease: string | undefined;
  #lastAgents = '';
  #lastReport = '';
  #informers: Informer[] = [];
  /** The last specs read, for re-plans on agent usage changes. */
  #lastRead: { revision: string; files: RepoFile[] } | undefined;
  /** The last plan left a service waiting for room (see `replanMs`). */
  #waiting = false;
  #replanTimer: TimerHandle | undefined;

  constructor(o: DeployerOptions) {
    this.#o = o;
    this.#clock = o.clock ?? systemClock;
    this.#log = o.logger ?? silentLogger();
  }

  /** Poll, and react to webhook triggers and to agents coming and going. */
  start(): void {
    this.#schedule(0);
    const store = this.#o.store;
    const opts = { clock: this.#clock, logger: this.#log };
    let triggers = 0;
    this.#informers.push(
      listAndWatch(store, KEYS.deployTrigger, {
        // The first listing is history, not a new push.
        onReset: () => undefined,
        onEvent: (ev) => {
          if (ev.type !== 'put') return;
          const { ref } = JSON.parse(ev.kv.value) as { ref: string | null };
          const branch = this.#o.source.branch;
          if (ref && branch && ref !== `refs/heads/${branch}`) {
            this.#log.info({ ref, branch }, 'push to another branch ignored');
            return;
          }
          triggers++;
          void this.trigger().catch((err: unknown) => this.#log.warn({ err: String(err), triggers }, 'triggered deploy failed'));
        },
      }, opts),
    );
    const agents = new Set<string>();
    const key = (k: string): string => k.slice(KEYS.agents.length);
    this.#informers.push(
      listAndWatch(store, KEYS.agents, {
        onReset: (kvs) => {
          agents.clear();
          for (const kv of kvs) agents.add(key(kv.key));
          this.agentsChanged([...agents]);
        },
        onEvent: (ev) => {
          const k = key(ev.type === 'put' ? ev.kv.key : ev.key);
          const had = agents.has(k);
          if (ev.type === 'put') agents.add(k);
          else agents.delete(k);
          if (had !== (ev.type === 'put')) this.agentsChanged([...agents]);
          else if (ev.type === 'put' && this.#waiting) this.#replanSoon();
        },
      }, opts),
    );
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    for (const i of this.#informers) i.close();
    if (this.#timer) this.#clock.clearTimeout(this.#timer);
    if (this.#replanTimer) this.#clock.clearTimeout(this.#replanTimer);
    await this.#running?.catch(() => undefined);
    if (this.#lease) await this.#o.store.revokeLease(this.#lease).catch(() => undefined);
  }

  /** Run a deploy now (webhook, CLI); concurrent triggers coalesce into one more run. */
  trigger(): Promise<DeployStatus | null> {
    return this.#run(true);
  }

  /** Re-plan from the last specs read (node usage changed), coalescing into a running deploy. */
  replan(): Promise<DeployStatus | null> {
    return this.#run(this.#lastRead === undefined);
  }

  #replanSoon(): void {
    if (this.#replanTimer || this.#stopped) return;
    this.#replanTimer = this.#clock.setTimeout(() => {
      this.#replanTimer = undefined;
      void this.replan().catch((err: unknown) => this.#log.warn({ err: String(err) }, 're-plan after a node usage change failed'));
    }, this.#o.replanMs ?? 2_000);
  }

  #run(read: boolean): Promise<DeployStatus | null> {
    if (this.#running) {
      this.#again = true;
      return this.#running;
    }
    this.#running = this.#runOnce(read).finally(() => {
      this.#running = undefined;
      if (this.#again && !this.#stopped) {
        this.#again = false;
        void this.trigger();
      }
    });
    return this.#running;
  }

  #schedule(ms: number): void {
    if (this.#stopped) return;
    this.#timer = this.#clock.setTimeout(() => {
      void this.#tick();
    }, ms);
  }

  async #tick(): Promise<void> {
    try {
      await this.trigger();
    } catch (err) {
      this.#log.warn({ err: String(err) }, 'deploy tick failed');
    }
    this.#schedule(this.#o.pollMs ?? 30_000);
  }

  async #isLeader(): Promise<boolean> {
    const store = this.#o.store;
    if (!this.#lease || !(await store.keepAlive(this.#lease))) this.#lease = await store.grantLease(this.#o.leaseTtlMs ?? 10_000);
    const key = KEYS.leader('deployer');
    const held = await store.get(key);
    if (held) return held.value === this.#o.deployerId;
    return (await store.cas(key, 0, this.#o.deployerId, { lease: this.#lease })).succeeded;
  }

  async #runOnce(read: boolean): Promise<DeployStatus | null> {
    const store = this.#o.store;
    if (!(await this.#isLeader())) return null;
    const { revision, files } = read || !this.#lastRead ? await this.#o.source.read() : this.#lastRead;
    this.#lastRead = { revision, files };
    const agents = (await store.list(KEYS.agents)).kvs.map((kv) => JSON.parse(kv.value) as AgentRecord);
    const current = await store.list(KEYS.assignments);
    const previous: Assignments = {};
    const compares: TxnCompare[] = [];
    for (const kv of current.kvs) {
      const a = JSON.parse(kv.value) as ServiceAssignment;
      previous[a.node] = a.services;
      compares.push({ key: kv.key, modRevision: kv.modRevision });
    }
    const plan = planDeploy(files, nodesFromAgents(agents), previous);
    const status: DeployStatus = {
      revision,
      ok: plan.ok,
      errors: plan.errors,
      warnings: plan.warnings,
      unplaced: plan.unplaced,
      changes: plan.changes,
      source: this.#o.source.describe,
      at: new Date(this.#clock.now()).toISOString(),
    };
    const ops: TxnOp[] = [];
    if (plan.ok && plan.assignments !== previous) {
      const now = new Date(this.#clock.now()).toISOString();
      for (const [node, services] of Object.entries(plan.assignments)) {
        if (previous[node] && JSON.stringify(previous[node]) === JSON.stringify(services)) continue;
        const doc: ServiceAssignment = { node, revision, services, written_at: now };
        ops.push({ type: 'put', key: KEYS.assignment(node), value: JSON.stringify(doc) });
      }
      for (const node of Object.keys(previous)) if (!plan.assignments[node]) ops.push({ type: 'delete', key: KEYS.assignment(node) });
    }
    ops.push({ type: 'put', key: KEYS.deployStatus, value: JSON.stringify(status) });
    // Compare on every assignment read: a concurrent writer makes this run retry instead of clobbering.
    const res = await store.txn(compares, ops);
    if (!res.succeeded) {
      this.#again = true;
      return status;
    }
    this.#lastAgents = agents.map((a) => a.agent_id).sort().join(',');
    this.#waiting = plan.ok && waitsForRoom(plan.assignments, plan.unplaced, agents);
    // Say each refusal and each unplaced service once per revision, not on every poll.
    const news = JSON.stringify([revision, plan.errors, plan.unplaced]) !== this.#lastReport;
    this.#lastReport = JSON.stringify([revision, plan.errors, plan.unplaced]);
    if (news && plan.errors.length) this.#log.warn({ revision, errors: plan.errors }, 'specs refused: nothing changed');
    for (const c of plan.changes) this.#log.info({ revision, ...c }, 'deploy change');
    if (news) for (const u of plan.unplaced) this.#log.warn({ revision, ...u }, 'service not placed');
    if (this.#o.exportDir && plan.ok) await exportNodeFiles(this.#o.exportDir, plan.assignments);
    return status;
  }

  /** Agents came or went: re-plan when the set of live node ids differs from the last run. */
  agentsChanged(ids: readonly string[]): void {
    const key = [...ids].sort().join(',');
    if (key !== this.#lastAgents) void this.trigger().catch((err: unknown) => this.#log.warn({ err: String(err) }, 'deploy after node change failed'));
  }
}

/** Whether a service waits for room: unplaced for capacity, or assigned to a node whose agent does not hold it. */
export function waitsForRoom(assignments: Assignments, unplaced: readonly Unplaced[], agents: readonly AgentRecord[]): boolean {
  if (unplaced.some((u) => u.reason === 'no_capacity')) return true;
  const charged = new Map(agents.map((a) => [a.agent_id, a.services_charged]));
  return Object.entries(assignments).some(([node, services]) => {
    const c = charged.get(node);
    return c !== undefined && services.some((s) => !c.includes(s.name));
  });
}

/** firework-compatible nodes/<node>.yaml files, each written to a temp name and renamed. */
export async function exportNodeFiles(dir: string, assignments: Assignments): Promise<void> {
  const nodesDir = join(dir, 'nodes');
  await mkdir(nodesDir, { recursive: true });
  const keep = new Set<string>();
  for (const [node, services] of Object.entries(assignments)) {
    const file = `${node}.yaml`;
    keep.add(file);
    const tmp = join(nodesDir, `.${file}.tmp`);
    await writeFile(tmp, renderNodeConfig({ node, services }));
    await rename(tmp, join(nodesDir, file));
  }
  for (const f of await readdir(nodesDir)) if (f.endsWith('.yaml') && !keep.has(f)) await unlink(join(nodesDir, f)).catch(() => undefined);
}
