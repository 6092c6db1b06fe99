import type { Command } from 'commander';
import type { FunctionRecord } from '../spec/index.ts';
import { formatAge, formatBytes, formatTable, printJson, runAction, withClient } from './output.ts';
import type { CliDeps, GlobalOptions } from './output.ts';

export function functionsTable(fns: readonly FunctionRecord[], now: number): string {
  return formatTable(
    ['NAME', 'ID', 'RUNTIME', 'MEMORY', 'SCALE', 'CODE', 'UPDATED'],
    fns.map((f) => [f.name, f.id, f.runtime, `${f.memory_mb}MB`, `${f.min_instances}-${f.max_instances}`, formatBytes(f.code_size), formatAge(f.updated_at, now)]),
  );
}

export function registerFnLs(fn: Command, deps: CliDeps): void {
  fn.command('ls')
    .alias('list')
    .description('list functions')
    .action(
      runAction(deps, async (_opts: unknown, cmd: Command) => {
        const g = cmd.optsWithGlobals<GlobalOptions>();
        const fns = await withClient(g, deps, (c) => c.listFunctions());
        if (g.json) printJson(deps.io, fns);
        else if (fns.length === 0) deps.io.out('no functions\n');
        else deps.io.out(functionsTable(fns, deps.now()));
      }),
    );
}
