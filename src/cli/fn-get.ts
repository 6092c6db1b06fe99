import type { Command } from 'commander';
import type { FunctionRecord } from '../spec/index.ts';
import { formatAge, formatBytes, formatFields, printJson, runAction, withClient } from './output.ts';
import type { CliDeps, GlobalOptions } from './output.ts';

export function functionDetails(f: FunctionRecord, now: number): string {
  const env = Object.entries(f.env_vars);
  return formatFields([
    ['name', f.name],
    ['id', f.id],
    ['runtime', f.runtime],
    ['entrypoint', f.entrypoint],
    ['sandbox', f.sandbox],
    ['memory', `${f.memory_mb}MB`],
    ['vcpu', String(f.vcpu)],
    ['port', String(f.port)],
    ['timeout', `${f.timeout_ms}ms`],
    ['instances', `min ${f.min_instances}, max ${f.max_instances}, target concurrency ${f.concurrency_target}`],
    ['scale down', `after ${f.scale_down_after_s}s idle, to zero after ${f.scale_to_zero_after_s}s`],
    ['code', f.code_sha256 ? `${formatBytes(f.code_size)} sha256:${f.code_sha256.slice(0, 12)}` : 'none (aether fn deploy)'],
    ['env', env.length === 0 ? '-' : env.map(([k, v]) => `${k}=${v}`).join(' ')],
    ['created', `${f.created_at} (${formatAge(f.created_at, now)})`],
    ['updated', `${f.updated_at} (${formatAge(f.updated_at, now)})`],
  ]);
}

export function registerFnGet(fn: Command, deps: CliDeps): void {
  fn.command('get')
    .description("show a function's settings")
    .argument('<fn>', 'function name or id')
    .action(
      runAction(deps, async (ref: string, _opts: unknown, cmd: Command) => {
        const g = cmd.optsWithGlobals<GlobalOptions>();
        const f = await withClient(g, deps, (c) => c.getFunction(ref));
        if (g.json) printJson(deps.io, f);
        else deps.io.out(functionDetails(f, deps.now()));
      }),
    );
}
