import { z } from 'zod';
import { AetherError } from '../core/index.ts';

/**
 * The function resource: upstream Aether's fields plus timeouts, scaling and sandbox settings.
 * These schemas validate the API, feed /api/openapi.json and type the rest of the code base.
 */
export const RUNTIMES = ['node', 'python'] as const;
export const SANDBOXES = ['process', 'qemu', 'firecracker'] as const;

const name = z.string().regex(/^[a-z][a-z0-9-]{0,62}$/, 'must be 1-63 chars of a-z, 0-9 and -, starting with a letter');
// A NUL cannot pass through exec or the environment: refuse it instead of launching something else.
const noNul = (s: string): boolean => !s.includes('\0');
const entrypoint = z
  .string()
  .min(1)
  .max(255)
  .refine(noNul, 'must not contain a NUL character')
  .refine((s) => !s.startsWith('/') && !s.split(/[\\/]/).includes('..'), 'must be a relative path inside the code');
const envVars = z.record(
  z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'env var names are [A-Za-z_][A-Za-z0-9_]*'),
  z.string().refine(noNul, 'env var values must not contain a NUL character'),
);
/** One message for every way a number can miss (not an integer, out of range, 1e308…). */
const int = (min: number, max: number): z.ZodNumber => {
  const msg = `must be an integer from ${min} to ${max}`;
  return z.number({ error: (iss) => (iss.input === undefined ? 'is required' : `${msg} (got ${typeName(iss.input)})`) }).int(msg).min(min, msg).max(max, msg);
};

function typeName(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v;
}

/** Settable fields with their ranges (no defaults: PUT uses them as a partial). */
const settable = {
  name,
  runtime: z.enum(RUNTIMES),
  entrypoint,
  vcpu: int(1, 64),
  memory_mb: int(16, 8192),
  port: int(1, 65535),
  env_vars: envVars,
  timeout_ms: int(100, 900_000),
  min_instances: int(0, 1000),
  max_instances: int(1, 1000),
  concurrency_target: int(1, 1000),
  scale_down_after_s: int(1, 86_400 * 30),
  scale_to_zero_after_s: int(1, 86_400 * 30),
  sandbox: z.enum(SANDBOXES),
};

export const CreateFunctionSchema = z.strictObject({
  ...settable,
  entrypoint: settable.entrypoint.optional(),
  vcpu: settable.vcpu.default(1),
  memory_mb: settable.memory_mb.default(128),
  port: settable.port.default(3000),
  env_vars: settable.env_vars.default({}),
  timeout_ms: settable.timeout_ms.default(30_000),
  min_instances: settable.min_instances.default(0),
  max_instances: settable.max_instances.default(10),
  concurrency_target: settable.concurrency_target.default(3),
  scale_down_after_s: settable.scale_down_after_s.default(30),
  scale_to_zero_after_s: settable.scale_to_zero_after_s.default(300),
  sandbox: settable.sandbox.optional(),
});

export const UpdateFunctionSchema = z.strictObject(settable).partial();

export type CreateFunctionInput = z.input<typeof CreateFunctionSchema>;
export type UpdateFunctionInput = z.infer<typeof UpdateFunctionSchema>;

export const FunctionSchema = z.object({
  id: z.string(),
  ...settable,
  sandbox: settable.sandbox,
  code_path: z.string().nullable(),
  code_sha256: z.string().nullable(),
  code_size: z.number().int().nullable(),
  created_at: z.string(),
  updated_at: z.string(),
});

/** A stored function, exactly as the API returns it. */
export type FunctionRecord = z.infer<typeof FunctionSchema>;

export function defaultEntrypoint(runtime: (typeof RUNTIMES)[number]): string {
  return runtime === 'python' ? 'main.py' : 'handler.js';
}

/** Parse with a schema; the error names the first offending field. */
export function parseOrThrow<S extends z.ZodType>(schema: S, input: unknown): z.infer<S> {
  // The input goes into issues so a wrong type ("expected string, received number") is told
  // apart from a missing field.
  const r = schema.safeParse(input, { reportInput: true, error: typeError });
  if (r.success) return r.data;
  throw new AetherError('AETHER_ERR_VALIDATION', describeZodError(r.error));
}

export function describeZodError(err: z.ZodError): string {
  const issue = err.issues[0];
  if (!issue) return 'invalid input';
  if (issue.code === 'unrecognized_keys') return `unknown field: ${issue.keys.join(', ')}`;
  const path = issue.path.join('.');
  return path ? `${path}: ${issue.message}` : issue.message;
}

/** Default message for type errors: "is required" only when the field is really missing. */
function typeError(iss: z.core.$ZodRawIssue): string | undefined {
  // A missing enum (runtime) too: "is required", not "Invalid option".
  if (iss.code === 'invalid_value' && iss.input === undefined) return 'is required';
  if (iss.code !== 'invalid_type') return undefined;
  if (iss.input === undefined) return 'is required';
  return `expected ${iss.expected}, got ${typeName(iss.input)}`;
}

/** Cross-field rules that a plain field schema cannot express. */
export function checkFunctionInvariants(fn: Pick<FunctionRecord, 'min_instances' | 'max_instances'>): void {
  if (fn.min_instances > fn.max_instances) {
    throw new AetherError('AETHER_ERR_VALIDATION', `min_instances: must be <= max_instances (${fn.max_instances})`);
  }
}

/** Fields whose change requires replacing running instances. */
export const RUNTIME_FIELDS = [
  'runtime',
  'entrypoint',
  'vcpu',
  'memory_mb',
  'port',
  'env_vars',
  'sandbox',
  'code_sha256',
] as const satisfies readonly (keyof FunctionRecord)[];

/** Hash of everything an instance was started with: instances with another hash are stale. */
export function instanceConfigKey(fn: FunctionRecord): string {
  // Called on the warm path for every request: records are immutable once stored, so cache per object.
  let key = configKeys.get(fn);
  if (key === undefined) {
    key = JSON.stringify(RUNTIME_FIELDS.map((f) => fn[f]));
    configKeys.set(fn, key);
  }
  return key;
}

const configKeys = new WeakMap<FunctionRecord, string>();

/** A complete stored function with every default filled, for tests and fixtures. */
export function sampleFunction(over: Partial<FunctionRecord> = {}): FunctionRecord {
  const at = new Date(0).toISOString();
  const base = CreateFunctionSchema.parse({ name: over.name ?? 'hello', runtime: over.runtime ?? 'node' });
  return {
    id: 'fn-1',
    ...base,
    entrypoint: defaultEntrypoint(base.runtime),
    sandbox: 'process',
    code_path: null,
    code_sha256: null,
    code_size: null,
    created_at: at,
    updated_at: at,
    ...over,
  };
}
