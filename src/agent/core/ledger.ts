/**
 * The node's one capacity ledger: every instance on it (function or service) holds a charge from
 * the moment it is admitted until its sandbox is gone. The agent record's `used` is its sum;
 * admission of any workload asks it first. Pure bookkeeping (no I/O, no clock).
 */
export interface Capacity {
  instances: number;
  memoryMb: number;
  vcpu: number;
}

export interface Charge {
  /** The instance id. */
  id: string;
  kind: 'function' | 'service';
  /** Function id or service name. */
  owner: string;
  memoryMb: number;
  vcpu: number;
}

export class CapacityLedger {
  readonly capacity: Capacity;
  readonly #charges = new Map<string, Charge>();

  constructor(capacity: Capacity) {
    this.capacity = capacity;
  }

  /** Sum of every charge; `kind` narrows it to one workload kind. */
  used(kind?: Charge['kind']): Capacity {
    const u = { instances: 0, memoryMb: 0, vcpu: 0 };
    for (const c of this.#charges.values()) {
      if (kind && c.kind !== kind) continue;
      u.instances++;
      u.memoryMb += c.memoryMb;
      u.vcpu += c.vcpu;
    }
    return u;
  }

  free(): Capacity {
    const u = this.used();
    return { instances: this.capacity.instances - u.instances, memoryMb: this.capacity.memoryMb - u.memoryMb, vcpu: this.capacity.vcpu - u.vcpu };
  }

  /** Whether one more instance of this size fits now (`extra`: capacity about to be freed, e.g. evictions). */
  fits(need: { memoryMb: number; vcpu: number }, extra: Capacity = { instances: 0, memoryMb: 0, vcpu: 0 }): boolean {
    const f = this.free();
    return f.instances + extra.instances >= 1 && f.memoryMb + extra.memoryMb >= need.memoryMb && f.vcpu + extra.vcpu >= need.vcpu;
  }

  /** Record a charge (replacing one with the same id). Admission decides with fits() first. */
  charge(c: Charge): void {
    this.#charges.set(c.id, { ...c });
  }

  /** Charge only if it fits; false (nothing charged) otherwise. */
  tryCharge(c: Charge): boolean {
    if (this.#charges.has(c.id)) return true;
    if (!this.fits(c)) return false;
    this.charge(c);
    return true;
  }

  release(id: string): boolean {
    return this.#charges.delete(id);
  }

  has(id: string): boolean {
    return this.#charges.has(id);
  }

  charges(): Charge[] {
    return [...this.#charges.values()].map((c) => ({ ...c }));
  }

  /** Why `need` does not fit, for status messages. */
  describe(need: { memoryMb: number; vcpu: number }): string {
    const u = this.used();
    const c = this.capacity;
    return `needs ${need.memoryMb} MB, ${need.vcpu} vCPU; node uses ${u.instances}/${c.instances} instances, ${u.memoryMb}/${c.memoryMb} MB, ${u.vcpu}/${c.vcpu} vCPU`;
  }
}
