import { readFile } from 'node:fs/promises';
import { InvalidArgumentError } from 'commander';
import type { Command } from 'commander';
import { AetherError } from '../core/index.ts';
import { RUNTIMES, SANDBOXES } from '../spec/index.ts';
import type { UpdateFunctionInput } from '../spec/index.ts';

/** Commander argParser for integers. */
export function intArg(value: string): number {
  if (!/^-?\d+$/.test(value.trim())) throw new InvalidArgumentError('must be an integer');
  return Number(value);
}

/** `KEY=VAL` -> [KEY, VAL]; the value may contain '=' and be empty. */
export function parseEnvPair(value: string): [string, string] {
  const eq = value.indexOf('=');
  if (eq <= 0) throw new InvalidArgumentError('must be KEY=VALUE');
  return [value.slice(0, eq), value.slice(eq + 1)];
}

/** Repeatable --env collector. */
export function collectEnv(value: string, prev: Record<string, string> | undefined): Record<string, string> {
  const [k, v] = parseEnvPair(value);
  return { ...prev, [k]: v };
}

/** `Name: value` (curl style) -> [name, value]. */
export function parseHeader(value: string): [string, string] {
  const colon = value.indexOf(':');
  if (colon <= 0) throw new InvalidArgumentError("must be 'Name: value'");
  const name = value.slice(0, colon).trim();
  if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name)) throw new InvalidArgumentError(`invalid header name "${name}"`);
  return [name, value.slice(colon + 1).trim()];
}

export function collectHeader(value: string, prev: Record<string, string> | undefined): Record<string, string> {
  const [k, v] = parseHeader(value);
  return { ...prev, [k]: v };
}

export function collectList(value: string, prev: string[] | undefined): string[] {
  return [...(prev ?? []), value];
}

/** curl-style --data: `@file` reads a file, `@-` reads stdin, anything else is the body itself. */
export async function readDataArg(value: string, stdin: AsyncIterable<Buffer | string> = process.stdin): Promise<Buffer> {
  if (!value.startsWith('@')) return Buffer.from(value);
  const path = value.slice(1);
  if (path === '-') {
    const chunks: Buffer[] = [];
    for await (const c of stdin) chunks.push(typeof c === 'string' ? Buffer.from(c) : c);
    return Buffer.concat(chunks);
  }
  try {
    return await readFile(path);
  } catch (err) {
    throw new AetherError('AETHER_ERR_VALIDATION', `--data: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
}

function oneOf<T extends string>(list: readonly T[]): (v: string) => T {
  return (v) => {
    if (!(list as readonly string[]).includes(v)) throw new InvalidArgumentError(`must be one of ${list.join(', ')}`);
    return v as T;
  };
}

export const runtimeArg = oneOf(RUNTIMES);
export const sandboxArg = oneOf(SANDBOXES);

/** The function settings shared by `fn create` and `fn update`. */
export function addFunctionFlags(cmd: Command): Command {
  return cmd
    .option('--runtime <runtime>', `runtime (${RUNTIMES.join('|')})`, runtimeArg)
    .option('--entrypoint <path>', 'file to run, relative to the code root (default handler.js / main.py)')
    .option('--memory <mb>', 'memory limit in MB', intArg)
    .option('--vcpu <n>', 'vCPUs', intArg)
    .option('--port <port>', 'port the function listens on (PORT)', intArg)
    .option('--env <KEY=VAL>', 'environment variable (repeatable)', collectEnv)
    .option('--timeout-ms <ms>', 'request timeout', intArg)
    .option('--min <n>', 'minimum instances', intArg)
    .option('--max <n>', 'maximum instances', intArg)
    .option('--concurrency <n>', 'target concurrent requests per instance', intArg)
    .option('--scale-down-after <s>', 'idle seconds before an extra instance stops', intArg)
    .option('--scale-to-zero-after <s>', 'idle seconds before the last instance stops', intArg)
    .option('--sandbox <kind>', `sandbox (${SANDBOXES.join('|')})`, sandboxArg);
}

export interface FunctionFlags {
  runtime?: (typeof RUNTIMES)[number];
  entrypoint?: string;
  memory?: number;
  vcpu?: number;
  port?: number;
  env?: Record<string, string>;
  timeoutMs?: number;
  min?: number;
  max?: number;
  concurrency?: number;
  scaleDownAfter?: number;
  scaleToZeroAfter?: number;
  sandbox?: (typeof SANDBOXES)[number];
  name?: string;
}

/** Flags -> API fields, only those given (the server validates ranges). */
export function functionFieldsFromFlags(o: FunctionFlags): UpdateFunctionInput {
  const f: UpdateFunctionInput = {};
  if (o.name !== undefined) f.name = o.name;
  if (o.runtime !== undefined) f.runtime = o.runtime;
  if (o.entrypoint !== undefined) f.entrypoint = o.entrypoint;
  if (o.memory !== undefined) f.memory_mb = o.memory;
  if (o.vcpu !== undefined) f.vcpu = o.vcpu;
  if (o.port !== undefined) f.port = o.port;
  if (o.env !== undefined) f.env_vars = o.env;
  if (o.timeoutMs !== undefined) f.timeout_ms = o.timeoutMs;
  if (o.min !== undefined) f.min_instances = o.min;
  if (o.max !== undefined) f.max_instances = o.max;
  if (o.concurrency !== undefined) f.concurrency_target = o.concurrency;
  if (o.scaleDownAfter !== undefined) f.scale_down_after_s = o.scaleDownAfter;
  if (o.scaleToZeroAfter !== undefined) f.scale_to_zero_after_s = o.scaleToZeroAfter;
  if (o.sandbox !== undefined) f.sandbox = o.sandbox;
  return f;
}
