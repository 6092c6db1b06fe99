import type { Command } from 'commander';
import type { InvocationRecord } from '../spec/index.ts';
import { intArg } from './flags.ts';
import { formatAge, formatTable, printJson, runAction, withClient } from './output.ts';
import type { CliDeps, GlobalOptions } from './output.ts';

export function invocationsTable(rows: readonly InvocationRecord[], now: number): string {
  return formatTable(
    ['ID', 'STATUS', 'CODE', 'DURATION', 'COLD', 'INSTANCE', 'STARTED', 'ERROR'],
    rows.map((r) => [
      r.id,
      r.status,
      String(r.status_code),
      `${r.duration_ms}ms`,
      r.cold_start ? 'yes' : 'no',
      r.instance_id ?? '-',
      formatAge(r.started_at, now),
      r.error ?? '',
    ]),
  );
}

export function registerFnInvocations(fn: Command, deps: CliDeps): void {
  fn.command('invocations')
    .description('recent invocations of a function, newest first')
    .argument('<fn>', 'function name or id')
    .option('--limit <n>', 'how many (server default 100)', intArg)
    .action(
      runAction(deps, async (ref: string, opts: { limit?: number }, cmd: Command) => {
        const g = cmd.optsWithGlobals<GlobalOptions>();
        const rows = await withClient(g, deps, (c) => c.listInvocations(ref, opts.limit));
        if (g.json) printJson(deps.io, rows);
        else if (rows.length === 0) deps.io.out('no invocations\n');
        else deps.io.out(invocationsTable(rows, deps.now()));
      }),
    );
}
