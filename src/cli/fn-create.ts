import type { Command } from 'commander';
import { addFunctionFlags, functionFieldsFromFlags } from './flags.ts';
import type { FunctionFlags } from './flags.ts';
import { printJson, runAction, withClient } from './output.ts';
import type { CliDeps, GlobalOptions } from './output.ts';

export function registerFnCreate(fn: Command, deps: CliDeps): void {
  addFunctionFlags(fn.command('create').description('create a function (then upload code with `aether fn deploy`)').argument('<name>', 'function name'))
    .action(
      runAction(deps, async (name: string, opts: FunctionFlags, cmd: Command) => {
        const g = cmd.optsWithGlobals<GlobalOptions>();
        const input = { ...functionFieldsFromFlags(opts), name, runtime: opts.runtime ?? 'node' };
        const rec = await withClient(g, deps, (c) => c.createFunction(input));
        if (g.json) printJson(deps.io, rec);
        else deps.io.out(`created function ${rec.name} (${rec.id})\n`);
      }),
    );
}
