import type { Command } from 'commander';
import { AetherError } from '../core/index.ts';
import { printJson, runAction } from './output.ts';
import type { CliDeps, GlobalOptions } from './output.ts';

/** The image module loads on demand: client commands never pay for it. */
const loadImage = () => import('../image/index.ts');

function collect(value: string, prev: string[]): string[] {
  return [...prev, value];
}

/** `aether image build|base|initramfs`: VM root images, built offline on this host. */
export function registerImageCommands(program: Command, deps: CliDeps): void {
  const image = program.command('image').description('build microVM root images (ext4) and the guest initramfs');
  const progress = (g: GlobalOptions) => (m: string): void => {
    if (g.json !== true) deps.io.err(`${m}\n`);
  };

  image
    .command('build <source>')
    .description('make an ext4 root image from a directory or an OCI image archive (docker save or OCI layout tar)')
    .requiredOption('-o, --output <file>', 'the ext4 image to write')
    .option('--user <user>', 'runtime.json user (overrides the image config)')
    .option('--workdir <dir>', 'runtime.json workdir')
    .option('--env <KEY=VALUE>', 'runtime.json env entry (repeatable)', collect, [])
    .action(
      runAction(deps, async (source: string, opts: { output: string; user?: string; workdir?: string; env: string[] }, cmd: Command) => {
        const g = cmd.optsWithGlobals<GlobalOptions>();
        const { buildImage } = await loadImage();
        const runtime: { user?: string; workdir?: string; env?: Record<string, string> } = {};
        if (opts.user !== undefined) runtime.user = opts.user;
        if (opts.workdir !== undefined) runtime.workdir = opts.workdir;
        if (opts.env.length > 0) {
          runtime.env = {};
          for (const kv of opts.env) {
            const i = kv.indexOf('=');
            if (i <= 0) throw new AetherError('AETHER_ERR_VALIDATION', `--env ${kv}: expected KEY=VALUE`);
            runtime.env[kv.slice(0, i)] = kv.slice(i + 1);
          }
        }
        const rt = await buildImage({ source, output: opts.output, runtime, onProgress: progress(g) });
        if (g.json === true) printJson(deps.io, { image: opts.output, runtime: rt });
        else deps.io.out(`${opts.output}\n`);
      }),
    );

  image
    .command('base <kind>')
    .description('build (or find in the cache) the node or python base image from this host\'s Node / python3 and busybox')
    .action(
      runAction(deps, async (kind: string, _opts: unknown, cmd: Command) => {
        const g = cmd.optsWithGlobals<GlobalOptions>();
        const { ensureBaseImage, BASE_KINDS } = await loadImage();
        const k = BASE_KINDS.find((b) => b === kind);
        if (k === undefined) throw new AetherError('AETHER_ERR_VALIDATION', `unknown base image ${JSON.stringify(kind)} (expected ${BASE_KINDS.join(' or ')})`);
        const path = await ensureBaseImage(k, { onProgress: progress(g) });
        if (g.json === true) printJson(deps.io, { kind: k, image: path });
        else deps.io.out(`${path}\n`);
      }),
    );

  image
    .command('initramfs')
    .description('build (or find in the cache) the guest initramfs: aether-init plus the kernel\'s virtio modules')
    .action(
      runAction(deps, async (_opts: unknown, cmd: Command) => {
        const g = cmd.optsWithGlobals<GlobalOptions>();
        const { ensureInitramfs } = await loadImage();
        const r = await ensureInitramfs();
        if (g.json === true) printJson(deps.io, { initramfs: r.path, kernel: r.kernel.kernel, version: r.kernel.version });
        else deps.io.out(`${r.path}\nkernel ${r.kernel.kernel}\n`);
      }),
    );
}
