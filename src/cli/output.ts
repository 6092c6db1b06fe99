import type { Command } from 'commander';
import { AetherError } from '../core/index.ts';
import { AetherClient, ClientError, isClientError, resolveConnection } from '../client/index.ts';

/** Where commands write; tests capture it, the real CLI uses the process streams. */
export interface CliIo {
  out(chunk: string | Uint8Array): void;
  err(text: string): void;
  /** Sets the exit code without exiting, so pending output is flushed. */
  setExitCode(code: number): void;
}

export const processIo: CliIo = {
  out: (chunk) => {
    process.stdout.write(chunk);
  },
  err: (text) => {
    process.stderr.write(text);
  },
  setExitCode: (code) => {
    process.exitCode = code;
  },
};

/** The program-wide options the lead declares in src/bin (see addGlobalOptions). */
export interface GlobalOptions {
  url?: string;
  token?: string;
  dataDir?: string;
  json?: boolean;
}

export interface CliDeps {
  io: CliIo;
  env: NodeJS.ProcessEnv;
  /** ms since epoch, for "3m ago" columns. */
  now: () => number;
}

export function defaultDeps(partial: Partial<CliDeps> = {}): CliDeps {
  return { io: partial.io ?? processIo, env: partial.env ?? process.env, now: partial.now ?? (() => Date.now()) };
}

/**
 * `error: CODE: message`, never a stack: the platform's code (or a socket's, e.g. ECONNREFUSED) when
 * the error has one, else a system error's code (ENOENT, EACCES…), else AETHER_ERR_INTERNAL.
 */
export function errorLine(err: unknown): string {
  if (isClientError(err) || err instanceof AetherError) return `error: ${err.code}: ${oneLine(err.message)}`;
  if (err instanceof Error) {
    const code = (err as NodeJS.ErrnoException).code;
    return `error: ${typeof code === 'string' && /^E[A-Z0-9_]+$/.test(code) ? code : 'AETHER_ERR_INTERNAL'}: ${oneLine(err.message)}`;
  }
  return `error: AETHER_ERR_INTERNAL: ${oneLine(String(err))}`;
}

/**
 * Commander's own errors (unknown option or command, missing or extra argument, an option value its
 * parser refused) are bad CLI input: `error: unknown option '--x'` -> `error: AETHER_ERR_VALIDATION:
 * unknown option '--x'`.
 */
export function usageErrorLine(message: string): string {
  return `error: AETHER_ERR_VALIDATION: ${oneLine(message.replace(/^error:\s*/, ''))}\n`;
}

/**
 * Route commander's error output of `program` and every command under it (call it after all are
 * registered) through usageErrorLine, to `io`. Help after an error and the exit code (1) stay
 * commander's; `exitOverride` makes it throw a CommanderError instead of exiting (tests).
 */
export function configureCliErrors(program: Command, o: { io?: CliIo; exitOverride?: boolean } = {}): Command {
  const io = o.io ?? processIo;
  const visit = (cmd: Command): void => {
    cmd.configureOutput({ writeErr: (text) => io.err(text), outputError: (text, write) => write(usageErrorLine(text)) });
    if (o.exitOverride) cmd.exitOverride();
    for (const sub of cmd.commands) visit(sub);
  };
  visit(program);
  return program;
}

function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, ' ').trim();
}

/** Wrap a command action: any error becomes one stderr line and exit code 1. */
export function runAction<A extends unknown[]>(deps: CliDeps, fn: (...args: A) => Promise<void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    try {
      await fn(...args);
    } catch (err) {
      deps.io.err(`${errorLine(err)}\n`);
      deps.io.setExitCode(1);
    }
  };
}

/** A client for the connection the global flags / env / data dir describe; closed after `fn`. */
export async function withClient<T>(globals: GlobalOptions, deps: CliDeps, fn: (client: AetherClient) => Promise<T>): Promise<T> {
  const conn = await resolveConnection({ url: globals.url, token: globals.token, dataDir: globals.dataDir, env: deps.env });
  const client = new AetherClient({ url: conn.url, token: conn.token });
  try {
    return await fn(client);
  } catch (err) {
    throw withHint(err, conn);
  } finally {
    await client.close();
  }
}

/** No connection to the platform at all (refused, no route, bad host): not a slow or failing one. */
export function isUnreachable(err: unknown): boolean {
  return isClientError(err) && err.status === 0 && err.code !== 'ABORTED' && err.code !== 'TIMEOUT';
}

/** What to check when the platform cannot be reached, or was reached without a token. */
function withHint(err: unknown, conn: { url: string; token: string | undefined; urlFrom: string; dataDir: string }): unknown {
  if (!isClientError(err)) return err;
  if (isUnreachable(err)) {
    return new ClientError(0, err.code, `${err.message} (URL from ${conn.urlFrom}; is \`aether up\` running?)`, { cause: err });
  }
  if (err.status === 401 && conn.token === undefined) {
    return new ClientError(401, err.code, `no admin token: none in ${conn.dataDir}/admin.token, AETHER_ADMIN_TOKEN or --token (run this in the directory \`aether up\` runs in, or pass --data-dir <its .aether>)`, { cause: err });
  }
  return err;
}

export function printJson(io: CliIo, value: unknown): void {
  io.out(`${JSON.stringify(value, null, 2)}\n`);
}

/** Left-aligned columns separated by two spaces; the last column is not padded. */
export function formatTable(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const all = [headers, ...rows];
  const widths = headers.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  return all
    .map((r) =>
      headers
        .map((_, i) => {
          const cell = r[i] ?? '';
          return i === headers.length - 1 ? cell : cell.padEnd(widths[i] ?? 0);
        })
        .join('  ')
        .trimEnd(),
    )
    .join('\n')
    .concat('\n');
}

/** Vertical "key: value" listing with aligned values. */
export function formatFields(fields: readonly (readonly [string, string])[]): string {
  const w = Math.max(0, ...fields.map(([k]) => k.length + 1));
  return fields.map(([k, v]) => `${`${k}:`.padEnd(w)}  ${v}`.trimEnd()).join('\n') + '\n';
}

export function formatBytes(n: number | null | undefined): string {
  if (n === null || n === undefined) return '-';
  if (n < 1024) return `${n}B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)}${units[u]}`;
}

/** "45s ago", "3m ago", "2h ago", "5d ago"; the timestamp itself when unparsable or in the future. */
export function formatAge(iso: string | null | undefined, now: number): string {
  if (!iso) return '-';
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return iso;
  const s = Math.floor((now - t) / 1000);
  if (s < 0) return iso;
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86_400)}d ago`;
}
