import type { Command } from 'commander';
import type { LogEntry } from '../client/index.ts';
import { intArg } from './flags.ts';
import { runAction, withClient } from './output.ts';
import type { CliDeps, GlobalOptions } from './output.ts';

export function formatLogEntry(e: LogEntry): string {
  const t = typeof e.time === 'number' ? new Date(e.time).toISOString() : e.time;
  return `${t} ${e.instance_id} ${e.stream.padEnd(6)} ${e.text}`;
}

export function registerFnLogs(fn: Command, deps: CliDeps): void {
  fn.command('logs')
    .description("print the output of a function's instances")
    .argument('<fn>', 'function name or id')
    .option('-f, --follow', 'keep printing new lines until interrupted')
    .option('--tail <n>', 'only the last n lines', intArg)
    .action(
      runAction(deps, async (ref: string, opts: { follow?: boolean; tail?: number }, cmd: Command) => {
        const g = cmd.optsWithGlobals<GlobalOptions>();
        const ac = new AbortController();
        // Ctrl-C ends a follow cleanly (exit code 0) instead of killing mid-line.
        const stop = (): void => ac.abort();
        if (opts.follow) process.once('SIGINT', stop);
        try {
          await withClient(g, deps, async (c) => {
            for await (const e of c.logs(ref, { tail: opts.tail, follow: opts.follow, signal: ac.signal })) {
              deps.io.out(g.json ? `${JSON.stringify(e)}\n` : `${formatLogEntry(e)}\n`);
            }
          });
        } finally {
          process.off('SIGINT', stop);
        }
      }),
    );
}
