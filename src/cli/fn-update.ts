import type { Command } from 'commander';
import { AetherError } from '../core/index.ts';
import { addFunctionFlags, collectList, functionFieldsFromFlags } from './flags.ts';
import type { FunctionFlags } from './flags.ts';
import { printJson, runAction, withClient } from './output.ts';
import type { CliDeps, GlobalOptions } from './output.ts';

export function registerFnUpdate(fn: Command, deps: CliDeps): void {
  addFunctionFlags(fn.command('update').description("change a function's settings (only the flags given)").argument('<fn>', 'function name or id'))
    .option('--name <name>', 'rename the function')
    .option('--unset-env <KEY>', 'remove an environment variable (repeatable)', collectList)
    .addHelpText('after', '\n--env adds to or replaces single variables; the others are kept.')
    .action(
      runAction(deps, async (ref: string, opts: FunctionFlags & { unsetEnv?: string[] }, cmd: Command) => {
        const g = cmd.optsWithGlobals<GlobalOptions>();
        const patch = functionFieldsFromFlags(opts);
        if (Object.keys(patch).length === 0 && opts.unsetEnv === undefined) {
          throw new AetherError('AETHER_ERR_VALIDATION', 'nothing to change: give at least one flag (see aether fn update --help)');
        }
        const rec = await withClient(g, deps, async (c) => {
          if (opts.env !== undefined || opts.unsetEnv !== undefined) {
            // PUT replaces env_vars as a whole: merge with what is stored.
            const env = { ...(await c.getFunction(ref)).env_vars, ...opts.env };
            for (const k of opts.unsetEnv ?? []) delete env[k];
            patch.env_vars = env;
          }
          return c.updateFunction(ref, patch);
        });
        if (g.json) printJson(deps.io, rec);
        else deps.io.out(`updated function ${rec.name} (${rec.id})\n`);
      }),
    );
}
