import { posix } from 'node:path';
import type { Command } from 'commander';
import { ClientError, isClientError } from '../client/index.ts';
import { AetherError } from '../core/index.ts';
import { defaultEntrypoint } from '../spec/index.ts';
import type { FunctionRecord, UpdateFunctionInput } from '../spec/index.ts';
import { runtimeArg } from './flags.ts';
import { formatBytes, printJson, runAction, withClient } from './output.ts';
import type { CliDeps, GlobalOptions } from './output.ts';
import { guessEntrypoint, guessRuntime, nameForDir, packDirectory } from './pack.ts';

interface DeployFlags {
  name?: string;
  runtime?: 'node' | 'python';
  entrypoint?: string;
}

/** The server refuses code without the function's entrypoint: say how to name another one. */
function hintEntrypoint(err: unknown): unknown {
  // The API answers AETHER_ERR_ENTRYPOINT_MISSING (archive without it) or a validation error naming it.
  const code = isClientError(err) ? err.code : '';
  if (isClientError(err) && (code === 'AETHER_ERR_ENTRYPOINT_MISSING' || (code === 'AETHER_ERR_VALIDATION' && /entrypoint/i.test(err.message))) && !/--entrypoint/.test(err.message)) {
    return new ClientError(err.status, err.code, `${err.message} (name the file to run with --entrypoint <path>)`, { cause: err });
  }
  return err;
}

export function registerFnDeploy(fn: Command, deps: CliDeps): void {
  fn.command('deploy')
    .description('zip a directory and upload it as the function code (creating the function if needed)')
    .argument('<dir>', 'directory with the code; .aetherignore (gitignore syntax) excludes files')
    .option('--name <name>', 'function name (default: the directory name)')
    .option('--runtime <runtime>', 'node|python (default: guessed from the files)', runtimeArg)
    .option('--entrypoint <path>', 'file to run, relative to <dir>')
    .action(
      runAction(deps, async (dir: string, opts: DeployFlags, cmd: Command) => {
        const g = cmd.optsWithGlobals<GlobalOptions>();
        const name = opts.name ?? nameForDir(dir);
        // Pack first: a bad directory fails before anything changes on the server.
        const packed = await packDirectory(dir);
        const result = await withClient(g, deps, async (c) => {
          let fnRec: FunctionRecord | undefined;
          try {
            fnRec = await c.getFunction(name);
          } catch (err) {
            if (!(isClientError(err) && err.code === 'AETHER_ERR_FUNCTION_NOT_FOUND')) throw err;
          }
          let created = false;
          if (!fnRec) {
            const runtime = opts.runtime ?? (await guessRuntime(dir, opts.entrypoint));
            const entrypoint = opts.entrypoint ?? (await guessEntrypoint(dir, runtime));
            // A new function whose code cannot run is refused before it exists.
            const runs = posix.normalize(entrypoint ?? defaultEntrypoint(runtime));
            if (!packed.files.includes(runs)) {
              throw new AetherError('AETHER_ERR_VALIDATION', `${dir} has no ${runs} to run (${runtime}); name the file with --entrypoint <path>, relative to ${dir}`);
            }
            fnRec = await c.createFunction({ name, runtime, ...(entrypoint ? { entrypoint } : {}) });
            created = true;
          } else {
            // Only what was asked for explicitly changes on an existing function.
            const patch: UpdateFunctionInput = {};
            if (opts.runtime && opts.runtime !== fnRec.runtime) patch.runtime = opts.runtime;
            if (opts.entrypoint && opts.entrypoint !== fnRec.entrypoint) patch.entrypoint = opts.entrypoint;
            if (Object.keys(patch).length > 0) fnRec = await c.updateFunction(fnRec.id, patch);
          }
          let upload;
          try {
            upload = await c.uploadCode(fnRec.id, packed.archive);
          } catch (err) {
            // A failed deploy of a new function leaves nothing behind.
            if (created) await c.deleteFunction(fnRec.id).catch(() => undefined);
            throw hintEntrypoint(err);
          }
          return { created, fn: fnRec, upload, invokeUrl: `${c.url}/functions/${encodeURIComponent(fnRec.name)}/` };
        });
        if (g.json) {
          printJson(deps.io, { created: result.created, function: result.fn, upload: result.upload, files: packed.files.length, invoke_url: result.invokeUrl });
          return;
        }
        const { fn: f, upload } = result;
        if (result.created) deps.io.out(`created function ${f.name} (${f.id}, ${f.runtime})\n`);
        deps.io.out(
          `deployed ${packed.files.length} file(s) to ${f.name}: ${formatBytes(upload.code_size)} sha256:${upload.code_sha256.slice(0, 12)}\n` +
            `invoke: ${result.invokeUrl}\n`,
        );
      }),
    );
}
