import type { Logger } from '../../core/index.ts';
import type { ExitInfo, RuntimeInstance } from '../../runtime/index.ts';
import type { SandboxKind } from '../../spec/index.ts';
import { transition, type InstanceState } from './state.ts';

/** Lines of an instance's output kept to explain a failed start. */
export const RECENT_LINES = 20;

export interface InstanceHooks {
  /** The program exited or became unreachable (the runtime said so at once): stop routing to it. */
  onGone?: () => void;
  /** The program exited (for any reason; the controller decides what that means in its state). */
  onExit?: (info: ExitInfo) => void;
  /** Its state changed (after the change). */
  onState?: (state: InstanceState) => void;
}

/**
 * One instance on this node as the core supervises it: its state (guarded by the transition
 * table), its sandbox, its charge in the ledger, what the runtime said about its end. Workload
 * controllers keep their own bookkeeping around it (records, in-flight counts, health).
 */
export class CoreInstance {
  readonly id: string;
  readonly kind: 'function' | 'service';
  /** Function id or service name. */
  readonly owner: string;
  readonly sandbox: SandboxKind;
  readonly memoryMb: number;
  readonly vcpu: number;
  /** ms since epoch: when its program started (an adopted one keeps its original time). */
  readonly startedAt: number;
  readonly adopted: boolean;
  rt: RuntimeInstance | undefined;
  /** Set once start() resolved (or adopted): the endpoint is valid from then on. */
  launched = false;
  exit: ExitInfo | undefined;
  /** Its program exited or became unreachable. */
  gone = false;
  /** Last lines it printed, quoted when its start fails. */
  readonly recent: string[] = [];
  hooks: InstanceHooks;
  #state: InstanceState = 'starting';
  readonly #log: Logger;

  constructor(o: { id: string; kind: 'function' | 'service'; owner: string; sandbox: SandboxKind; memoryMb: number; vcpu: number; startedAt: number; adopted: boolean; hooks: InstanceHooks; logger: Logger }) {
    this.id = o.id;
    this.kind = o.kind;
    this.owner = o.owner;
    this.sandbox = o.sandbox;
    this.memoryMb = o.memoryMb;
    this.vcpu = o.vcpu;
    this.startedAt = o.startedAt;
    this.adopted = o.adopted;
    this.hooks = o.hooks;
    this.#log = o.logger;
  }

  get state(): InstanceState {
    return this.#state;
  }

  /**
   * Move to `next` if the table allows it. An illegal change is a bug in a controller: refused
   * (the state stays), logged with its code, and reported as false, never thrown into a teardown.
   */
  to(next: InstanceState): boolean {
    try {
      this.#state = transition(this.#state, next, this.id);
    } catch (err) {
      this.#log.error({ err, instance: this.id, owner: this.owner }, 'refused an illegal instance state change');
      return false;
    }
    this.hooks.onState?.(this.#state);
    return true;
  }
}
