import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { AetherError, clip, isAetherError, newId, silentLogger, systemClock, type Clock, type Logger } from '../core/index.ts';
import {
  CreateFunctionSchema,
  KEYS,
  UpdateFunctionSchema,
  checkFunctionInvariants,
  codeBlobKey,
  defaultEntrypoint,
  parseOrThrow,
  placement,
  type AgentRecord,
  type FunctionRecord,
  type InvocationRecord,
  type InstanceRecord,
  type SANDBOXES,
} from '../spec/index.ts';
import type { KeyValue, Store } from '../store/index.ts';
import type { BlobStore } from '../blob/index.ts';
import { DEFAULT_LIMITS, validateArchive, type ArchiveLimits } from '../archive/index.ts';
import { newestRecords } from './records.ts';

export type Sandbox = (typeof SANDBOXES)[number];

export interface FunctionServiceOptions {
  store: Store;
  blobs: BlobStore;
  /** Sandbox for functions created without one. */
  defaultSandbox: Sandbox;
  /**
   * Sandboxes live agents offer (default: only `process`); others are refused with a 400. The
   * gateway replaces it with what its agents advertise (setSandboxSource).
   */
  availableSandboxes?: readonly Sandbox[];
  limits?: ArchiveLimits;
  clock?: Clock;
  logger?: Logger;
  /** Where uploads are spooled and validated (default: the OS temp dir). */
  tmpDir?: string;
  /** CAS attempts before an update gives up with AETHER_ERR_CONFLICT (default 5). */
  maxAttempts?: number;
}

export interface UploadResult {
  message: 'code uploaded';
  code_path: string;
  code_sha256: string;
  code_size: number;
}

export const MAX_INVOCATIONS_LIMIT = 1000;

/** Ids are `fn-` + base32; names are [a-z][a-z0-9-]: anything else cannot be a function. */
const ID_OR_NAME = /^[a-z0-9][a-z0-9-]{0,79}$/;

/**
 * Function CRUD and code upload over the Store (records, name index, invocations) and the
 * BlobStore (archives). Every write is conditional on the revision it read, so concurrent
 * gateways never lose each other's changes and names stay unique.
 */
export class FunctionService {
  readonly #store: Store;
  readonly #blobs: BlobStore;
  readonly #defaultSandbox: Sandbox;
  #sandboxes: () => readonly Sandbox[];
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #tmpDir: string;
  readonly #maxAttempts: number;
  readonly limits: ArchiveLimits;

  constructor(opts: FunctionServiceOptions) {
    this.#store = opts.store;
    this.#blobs = opts.blobs;
    this.#defaultSandbox = opts.defaultSandbox;
    const fixed = opts.availableSandboxes ?? ['process'];
    this.#sandboxes = () => fixed;
    this.limits = opts.limits ?? DEFAULT_LIMITS;
    this.#clock = opts.clock ?? systemClock;
    this.#log = opts.logger ?? silentLogger();
    this.#tmpDir = opts.tmpDir ?? tmpdir();
    this.#maxAttempts = opts.maxAttempts ?? 5;
  }

  async create(input: unknown): Promise<FunctionRecord> {
    const p = parseOrThrow(CreateFunctionSchema, input);
    checkFunctionInvariants(p);
    this.#checkSandbox(p.sandbox);
    await this.#checkCapacity({ memory_mb: p.memory_mb, vcpu: p.vcpu, sandbox: p.sandbox ?? this.#defaultSandbox });
    const now = this.#clock.now();
    const iso = new Date(now).toISOString();
    const rec: FunctionRecord = {
      id: newId('fn', now),
      name: p.name,
      runtime: p.runtime,
      entrypoint: p.entrypoint ?? defaultEntrypoint(p.runtime),
      code_path: null,
      code_sha256: null,
      code_size: null,
      vcpu: p.vcpu,
      memory_mb: p.memory_mb,
      port: p.port,
      env_vars: p.env_vars,
      timeout_ms: p.timeout_ms,
      min_instances: p.min_instances,
      max_instances: p.max_instances,
      concurrency_target: p.concurrency_target,
      scale_down_after_s: p.scale_down_after_s,
      scale_to_zero_after_s: p.scale_to_zero_after_s,
      sandbox: p.sandbox ?? this.#defaultSandbox,
      created_at: iso,
      updated_at: iso,
    };
    // Record and name index in one txn, both create-only: two gateways cannot both win a name.
    const r = await this.#s(
      this.#store.txn(
        [
          { key: KEYS.functionName(rec.name), modRevision: 0 },
          { key: KEYS.function(rec.id), modRevision: 0 },
        ],
        [
          { type: 'put', key: KEYS.function(rec.id), value: JSON.stringify(rec) },
          { type: 'put', key: KEYS.functionName(rec.name), value: rec.id },
        ],
      ),
    );
    if (!r.succeeded) throw nameTaken(rec.name);
    return rec;
  }

  async list(): Promise<FunctionRecord[]> {
    const r = await this.#s(this.#store.list(KEYS.functions));
    return r.kvs.map((kv) => JSON.parse(kv.value) as FunctionRecord);
  }

  /** By id, else by name. Throws AETHER_ERR_FUNCTION_NOT_FOUND. */
  async get(idOrName: string): Promise<FunctionRecord> {
    return (await this.#mustFind(idOrName)).rec;
  }

  /** Like get() but undefined when there is no such function. */
  async find(idOrName: string): Promise<FunctionRecord | undefined> {
    return (await this.#find(idOrName))?.rec;
  }

  /** Partial update: given fields replace stored ones (env_vars as a whole); may rename. */
  /**
   * Where the accepted sandboxes come from (the gateway: the kinds its live agents advertise).
   * `process` is always accepted, so functions can be created before any agent runs.
   */
  setSandboxSource(source: () => readonly Sandbox[]): void {
    this.#sandboxes = () => [...new Set<Sandbox>(['process', ...source()])];
  }

  /** A VM sandbox no agent runs is refused, instead of a function that can never start. */
  #checkSandbox(sandbox: Sandbox | undefined): void {
    const available = this.#sandboxes();
    if (sandbox === undefined || available.includes(sandbox)) return;
    throw new AetherError('AETHER_ERR_VALIDATION', `sandbox: "${sandbox}" is not available on this platform: no live agent offers it (available: ${available.join(', ')}; see \`aether doctor\`)`);
  }

  /** Refuse a size no registered agent can ever hold (with no agent registered yet there is nothing to judge). */
  async #checkCapacity(need: { memory_mb: number; vcpu: number; sandbox: Sandbox }): Promise<void> {
    const agents = (await this.#s(this.#store.list(KEYS.agents))).kvs.flatMap((kv) => {
      try {
        return [JSON.parse(kv.value) as AgentRecord];
      } catch {
        return [];
      }
    });
    const p = placement(agents, need);
    if (p.ever || p.agents === 0) return; // no agent of this sandbox kind yet: nothing to judge
    const kind = agents.filter((a) => (a.sandboxes ?? ['process']).includes(need.sandbox));
    const mem = Math.max(...kind.map((a) => a.capacity.memory_mb));
    const vcpu = Math.max(...kind.map((a) => a.capacity.vcpu));
    throw new AetherError('AETHER_ERR_EXCEEDS_CAPACITY', `memory_mb ${need.memory_mb} and vcpu ${need.vcpu}: no agent can hold that (largest agent: ${mem} MB, ${vcpu} vCPU)`);
  }

  async update(idOrName: string, input: unknown): Promise<FunctionRecord> {
    let found = await this.#mustFind(idOrName);
    const patch = parseOrThrow(UpdateFunctionSchema, input);
    this.#checkSandbox(patch.sandbox);
    if (patch.memory_mb !== undefined || patch.vcpu !== undefined || patch.sandbox !== undefined) {
      await this.#checkCapacity({ memory_mb: patch.memory_mb ?? found.rec.memory_mb, vcpu: patch.vcpu ?? found.rec.vcpu, sandbox: patch.sandbox ?? found.rec.sandbox });
    }
    for (let attempt = 1; ; attempt++) {
      const cur = found.rec;
      const next: FunctionRecord = { ...cur };
      for (const [k, v] of Object.entries(patch)) if (v !== undefined) (next as Record<string, unknown>)[k] = v;
      // Switching runtime without naming an entrypoint: follow the default if the old one was the default.
      if (patch.runtime && patch.entrypoint === undefined && cur.entrypoint === defaultEntrypoint(cur.runtime)) {
        next.entrypoint = defaultEntrypoint(patch.runtime);
      }
      checkFunctionInvariants(next);
      next.updated_at = this.#stamp(cur.updated_at);
      const value = JSON.stringify(next);
      let ok: boolean;
      if (next.name !== cur.name) {
        const r = await this.#s(
          this.#store.txn(
            [
              { key: KEYS.function(cur.id), modRevision: found.kv.modRevision },
              { key: KEYS.functionName(next.name), modRevision: 0 },
            ],
            [
              { type: 'put', key: KEYS.function(cur.id), value },
              { type: 'put', key: KEYS.functionName(next.name), value: cur.id },
              { type: 'delete', key: KEYS.functionName(cur.name) },
            ],
          ),
        );
        ok = r.succeeded;
        if (!ok && (await this.#s(this.#store.get(KEYS.functionName(next.name))))) throw nameTaken(next.name);
      } else {
        ok = (await this.#s(this.#store.cas(KEYS.function(cur.id), found.kv.modRevision, value))).succeeded;
      }
      if (ok) return next;
      if (attempt >= this.#maxAttempts) throw conflict();
      found = await this.#mustFind(cur.id);
    }
  }

  /** Deletes the record, its name, its invocation records and its code blobs. */
  async remove(idOrName: string): Promise<void> {
    let found = await this.#mustFind(idOrName);
    for (let attempt = 1; ; attempt++) {
      const { rec, kv } = found;
      const r = await this.#s(
        this.#store.txn(
          [{ key: KEYS.function(rec.id), modRevision: kv.modRevision }],
          [
            { type: 'delete', key: KEYS.function(rec.id) },
            { type: 'delete', key: KEYS.functionName(rec.name) },
            { type: 'deletePrefix', prefix: KEYS.invocationsOf(rec.id) },
          ],
        ),
      );
      if (r.succeeded) break;
      if (attempt >= this.#maxAttempts) throw conflict();
      found = await this.#mustFind(rec.id);
    }
    const id = found.rec.id;
    try {
      for (const b of await this.#blobs.list(`functions/${id}/`)) await this.#blobs.delete(b.key);
    } catch (err) {
      // The function is gone either way; an orphaned blob is only wasted space.
      this.#log.warn({ err, function_id: id }, 'could not delete code blobs of a deleted function');
    }
  }

  /**
   * Store a new archive: spool and hash it, validate it fully (same checks as the agent's
   * extraction), put it under its sha256, then point the record at it. A failure at any step
   * leaves the previous code and record as they were.
   */
  async uploadCode(idOrName: string, body: Readable | Buffer): Promise<UploadResult> {
    const first = await this.#mustFind(idOrName);
    const dir = await mkdtemp(join(this.#tmpDir, 'aether-upload-'));
    try {
      const file = join(dir, 'archive');
      const { sha256, size } = await this.#spool(body, file);
      if (size === 0) {
        throw new AetherError('AETHER_ERR_ARCHIVE_INVALID', 'empty upload: send the archive as the request body or as multipart field "file"');
      }
      let validatedFor = first.rec.entrypoint;
      await validateArchive(file, this.limits, validatedFor, dir);
      const key = codeBlobKey(first.rec.id, sha256);
      try {
        await this.#blobs.put(key, createReadStream(file));
      } catch (err) {
        if (isAetherError(err) && err.code !== 'AETHER_ERR_INTERNAL') throw err;
        throw new AetherError('AETHER_ERR_UNAVAILABLE', 'blob store is unavailable; the code was not stored', { cause: err });
      }
      // Point the record at the new blob; on any failure remove the blob unless the record uses it.
      let found = first;
      try {
        for (let attempt = 1; ; attempt++) {
          const cur = found.rec;
          if (cur.entrypoint !== validatedFor) {
            // The entrypoint changed while we worked: the archive must contain the new one.
            validatedFor = cur.entrypoint;
            await validateArchive(file, this.limits, validatedFor, dir);
          }
          const next: FunctionRecord = { ...cur, code_path: key, code_sha256: sha256, code_size: size, updated_at: this.#stamp(cur.updated_at) };
          const r = await this.#s(this.#store.cas(KEYS.function(cur.id), found.kv.modRevision, JSON.stringify(next)));
          if (r.succeeded) {
            if (cur.code_path && cur.code_path !== key) await this.#deleteBlob(cur.code_path);
            return { message: 'code uploaded', code_path: key, code_sha256: sha256, code_size: size };
          }
          if (attempt >= this.#maxAttempts) throw conflict();
          const again = await this.#find(cur.id);
          if (!again) throw notFound(idOrName);
          found = again;
        }
      } catch (err) {
        if (found.rec.code_path !== key) await this.#deleteBlob(key);
        throw err;
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** Newest first (invocation ids sort by time). */
  async invocations(idOrName: string, limit = 100): Promise<InvocationRecord[]> {
    const { rec } = await this.#mustFind(idOrName);
    const n = Math.max(1, Math.min(MAX_INVOCATIONS_LIMIT, Math.floor(limit)));
    // Each key holds one or more records (a chunk): the newest n keys hold at least n records.
    const r = await this.#s(this.#store.list(KEYS.invocationsOf(rec.id), { reverse: true, limit: n }));
    return newestRecords(
      r.kvs.map((kv) => kv.value),
      n,
    );
  }

  /** Running instances of the function (registered by agents, newest last). */
  async instances(idOrName: string): Promise<InstanceRecord[]> {
    const { rec } = await this.#mustFind(idOrName);
    const r = await this.#s(this.#store.list(KEYS.instancesOf(rec.id)));
    return r.kvs.map((kv) => JSON.parse(kv.value) as InstanceRecord);
  }

  async #find(idOrName: string): Promise<{ rec: FunctionRecord; kv: KeyValue } | undefined> {
    if (!ID_OR_NAME.test(idOrName)) return undefined;
    let kv = await this.#s(this.#store.get(KEYS.function(idOrName)));
    if (!kv) {
      const byName = await this.#s(this.#store.get(KEYS.functionName(idOrName)));
      if (!byName) return undefined;
      kv = await this.#s(this.#store.get(KEYS.function(byName.value)));
      if (!kv) return undefined;
    }
    return { rec: JSON.parse(kv.value) as FunctionRecord, kv };
  }

  async #mustFind(idOrName: string): Promise<{ rec: FunctionRecord; kv: KeyValue }> {
    const f = await this.#find(idOrName);
    if (!f) throw notFound(idOrName);
    return f;
  }

  /** ISO time for updated_at, strictly after the previous value (the clock may not have moved). */
  #stamp(prev: string): string {
    const p = Date.parse(prev);
    const now = this.#clock.now();
    return new Date(Number.isNaN(p) ? now : Math.max(now, p + 1)).toISOString();
  }

  async #spool(body: Readable | Buffer, file: string): Promise<{ sha256: string; size: number }> {
    const max = this.limits.maxArchiveBytes;
    if (Buffer.isBuffer(body) && body.length > max) throw tooLarge(max);
    const hash = createHash('sha256');
    let size = 0;
    const meter = new Transform({
      transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
        size += chunk.length;
        if (size > max) return cb(tooLarge(max));
        hash.update(chunk);
        cb(null, chunk);
      },
    });
    const src = Buffer.isBuffer(body) ? Readable.from([body]) : body;
    // pipe(), not pipeline(): on a limit error the request must stay open so the client still
    // receives its 413 (pipeline would destroy the request and with it the socket).
    // (the listener stays: a late client abort must not become an unhandled 'error')
    src.on('error', (err: Error) => meter.destroy(err));
    src.pipe(meter);
    try {
      await pipeline(meter, createWriteStream(file, { mode: 0o600 }));
    } catch (err) {
      src.unpipe(meter);
      if (isAetherError(err)) throw err;
      const e = err as NodeJS.ErrnoException;
      if (typeof e?.syscall === 'string') throw new AetherError('AETHER_ERR_INTERNAL', 'could not spool the upload', { cause: err });
      throw new AetherError('AETHER_ERR_VALIDATION', `the request body could not be read: ${e?.message ?? String(err)}`);
    }
    return { sha256: hash.digest('hex'), size };
  }

  async #deleteBlob(key: string): Promise<void> {
    try {
      await this.#blobs.delete(key);
    } catch (err) {
      this.#log.warn({ err, key }, 'could not delete a code blob');
    }
  }

  /** Store failures are the backing service's, not the client's: 503 (coded errors pass through). */
  async #s<T>(p: Promise<T>): Promise<T> {
    try {
      return await p;
    } catch (err) {
      if (isAetherError(err) && err.code !== 'AETHER_ERR_INTERNAL') throw err;
      throw new AetherError('AETHER_ERR_UNAVAILABLE', 'the store is unavailable; retry later', { cause: err });
    }
  }
}

function notFound(idOrName: string): AetherError {
  return new AetherError('AETHER_ERR_FUNCTION_NOT_FOUND', `function not found: ${clip(idOrName)}`);
}

function nameTaken(name: string): AetherError {
  return new AetherError('AETHER_ERR_NAME_TAKEN', `a function named ${name} already exists`);
}

function conflict(): AetherError {
  return new AetherError('AETHER_ERR_CONFLICT', 'the function changed concurrently; retry');
}

function tooLarge(max: number): AetherError {
  return new AetherError('AETHER_ERR_PAYLOAD_TOO_LARGE', `archive exceeds the limit of ${max} bytes`);
}
