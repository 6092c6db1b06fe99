import type { Command } from 'commander';
import { printJson, runAction, withClient } from './output.ts';
import type { CliDeps, GlobalOptions } from './output.ts';

export function registerFnRm(fn: Command, deps: CliDeps): void {
  fn.command('rm')
    .alias('delete')
    .description('delete a function (its instances stop)')
    .argument('<fn>', 'function name or id')
    .action(
      runAction(deps, async (ref: string, _opts: unknown, cmd: Command) => {
        const g = cmd.optsWithGlobals<GlobalOptions>();
        await withClient(g, deps, (c) => c.deleteFunction(ref));
        if (g.json) printJson(deps.io, { deleted: ref });
        else deps.io.out(`deleted function ${ref}\n`);
      }),
    );
}
