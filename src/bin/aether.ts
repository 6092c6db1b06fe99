import { Command } from 'commander';
import { addGlobalOptions, registerClientCommands, registerDoctor, registerImage } from '../cli/index.ts';
import { registerServeCommands } from '../cli/serve.ts';
import { isAetherError } from '../core/index.ts';

// Instances we start must not pay for the host's CA bundle on every node start (~120 ms).
delete process.env['NODE_EXTRA_CA_CERTS'];

const program = new Command('aether').description('Aether: functions in sandboxes, on one machine or many').showHelpAfterError();
addGlobalOptions(program);
// The platform (drivers, fastify, AWS SDK…) loads only for up/gateway/agent: client commands stay fast.
registerServeCommands(program, async (role, flags) => (await import('./platform.ts')).startNode(role, flags));
registerClientCommands(program);
registerDoctor(program);
registerImage(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  const msg = isAetherError(err) ? `${err.code}: ${err.message}` : err instanceof Error ? err.message : String(err);
  process.stderr.write(`error: ${msg}\n`);
  process.exit(1);
}
