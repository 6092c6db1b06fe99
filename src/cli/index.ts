import type { Command } from 'commander';
import { defaultDeps } from './output.ts';
import type { CliDeps } from './output.ts';
import { registerDoctorWith } from './doctor.ts';
import type { HostProbe } from './doctor.ts';
import { registerFnCreate } from './fn-create.ts';
import { registerFnDeploy } from './fn-deploy.ts';
import { registerFnGet } from './fn-get.ts';
import { registerFnInvocations } from './fn-invocations.ts';
import { registerFnInvoke } from './fn-invoke.ts';
import { registerFnLogs } from './fn-logs.ts';
import { registerFnLs } from './fn-ls.ts';
import { registerFnRm } from './fn-rm.ts';
import { registerFnUpdate } from './fn-update.ts';
import { registerServiceCommands } from './services.ts';
import { registerImageCommands } from './image.ts';

export { processIo, errorLine, usageErrorLine, configureCliErrors, runAction, withClient, printJson, formatTable, formatFields, formatBytes, formatAge, defaultDeps } from './output.ts';
export type { CliIo, CliDeps, GlobalOptions } from './output.ts';
export { doctorJson, doctorReport } from './doctor.ts';
export type { HostProbe } from './doctor.ts';
export { packDirectory, sanitizeName, guessRuntime } from './pack.ts';

/** The program-wide connection/output options (src/bin may declare them itself instead). */
export function addGlobalOptions(program: Command): Command {
  return program
    .option('--url <url>', 'gateway URL (env AETHER_URL, else <data-dir>/url, else http://127.0.0.1:8080)')
    .option('--token <token>', 'admin token (env AETHER_ADMIN_TOKEN, else <data-dir>/admin.token)')
    .option('--data-dir <dir>', 'data directory of a local `aether up` (env AETHER_DATA_DIR, default ./.aether)')
    .option('--json', 'machine-readable output');
}

/** `aether fn …`: the commands that talk to a running platform through the API. */
export function registerClientCommands(program: Command, deps: Partial<CliDeps> = {}): void {
  const d = defaultDeps(deps);
  const fn = program.command('fn').description('manage and call functions');
  registerFnCreate(fn, d);
  registerFnLs(fn, d);
  registerFnGet(fn, d);
  registerFnUpdate(fn, d);
  registerFnRm(fn, d);
  registerFnDeploy(fn, d);
  registerFnInvoke(fn, d);
  registerFnLogs(fn, d);
  registerFnInvocations(fn, d);
  registerServiceCommands(program, d);
}

/** `aether doctor [--json]`: prints probeHost() from src/runtime. */
export function registerDoctor(program: Command, deps: Partial<CliDeps> & { probe?: () => Promise<HostProbe> } = {}): void {
  registerDoctorWith(program, defaultDeps(deps), deps.probe);
}

/** `aether image build|base|initramfs`: microVM images, built locally (no API). */
export function registerImage(program: Command, deps: Partial<CliDeps> = {}): void {
  registerImageCommands(program, defaultDeps(deps));
}
