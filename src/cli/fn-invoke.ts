import type { Command } from 'commander';
import { collectHeader, readDataArg } from './flags.ts';
import { printJson, runAction, withClient } from './output.ts';
import type { CliDeps, GlobalOptions } from './output.ts';

interface InvokeFlags {
  data?: string;
  method?: string;
  path?: string;
  header?: Record<string, string>;
  include?: boolean;
  timeoutMs?: number;
}

export function registerFnInvoke(fn: Command, deps: CliDeps): void {
  fn.command('invoke')
    .description('call a function over HTTP and print the response body')
    .argument('<fn>', 'function name or id')
    .option('-d, --data <data>', 'request body: text, @file, or @- for stdin')
    .option('-X, --method <method>', 'HTTP method (default GET, or POST with --data)')
    .option('--path <path>', 'path (and query) after /functions/<fn>', '/')
    .option('-H, --header <header>', "request header 'Name: value' (repeatable)", collectHeader)
    .option('-i, --include', 'print the status line and response headers first')
    .addHelpText('after', '\nExits with 1 when the function answers with a status >= 400.')
    .action(
      runAction(deps, async (ref: string, opts: InvokeFlags, cmd: Command) => {
        const g = cmd.optsWithGlobals<GlobalOptions>();
        const body = opts.data === undefined ? undefined : await readDataArg(opts.data);
        const res = await withClient(g, deps, (c) =>
          c.invoke(ref, { method: opts.method, path: opts.path, body, headers: opts.header }),
        );
        if (g.json) {
          printJson(deps.io, {
            status: res.status,
            invocation_id: res.invocationId ?? null,
            cold_start: res.coldStart ?? null,
            headers: res.headers,
            body: res.body.toString('utf8'),
          });
        } else {
          if (opts.include) {
            const lines = [`HTTP ${res.status}`];
            for (const [k, v] of Object.entries(res.headers)) {
              for (const one of Array.isArray(v) ? v : v === undefined ? [] : [v]) lines.push(`${k}: ${one}`);
            }
            deps.io.out(`${lines.join('\n')}\n\n`);
          }
          deps.io.out(res.body);
        }
        if (res.status >= 400) {
          const platform = platformError(res.headers, res.body);
          // The platform's own error JSON ends with no newline: the error line must not be glued to it.
          if (platform && !g.json && !res.body.toString('utf8').endsWith('\n')) deps.io.out('\n');
          const where = `${ref} answered HTTP ${res.status}${res.invocationId ? ` (invocation ${res.invocationId})` : ''}`;
          deps.io.err(platform ? `error: ${platform.code}: ${platform.message} (${where})\n` : `error: ${where}\n`);
          deps.io.setExitCode(1);
        }
      }),
    );
}

/** The platform's `{"error":{"code":"AETHER_ERR_…","message":…}}` (no such function, no code, a failed cold start), not the function's own answer. */
export function platformError(headers: Record<string, string | string[] | undefined>, body: Buffer): { code: string; message: string } | undefined {
  if (!String(headers['content-type'] ?? '').startsWith('application/json') || body.length > 4096) return undefined;
  try {
    const e = (JSON.parse(body.toString('utf8')) as { error?: { code?: unknown; message?: unknown } }).error;
    if (typeof e?.code === 'string' && e.code.startsWith('AETHER_ERR_') && typeof e.message === 'string') return { code: e.code, message: e.message };
  } catch {
    // the function's own body
  }
  return undefined;
}
