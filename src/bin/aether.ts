import { Command } from 'commander';
import { addGlobalOptions, configureCliErrors, errorLine, registerClientCommands, registerDoctor, registerImage } from '../cli/index.ts';
import { registerServeCommands } from '../cli/serve.ts';

// Instances we start must not pay for the host's CA bundle on every node start (~120 ms).
delete process.env['NODE_EXTRA_CA_CERTS'];

const program = new Command('aether').description('Aether: functions in sandboxes, on one machine or many').showHelpAfterError();
addGlobalOptions(program);
// The platform (drivers, fastify, AWS SDK…) loads only for up/gateway/agent: client commands stay fast.
registerServeCommands(program, async (role, flags) => (await import('./platform.ts')).startNode(role, flags));
registerClientCommands(program);
registerDoctor(program);
registerImage(program);
// Commander's own errors (unknown option, missing argument, a bad option value) get a code too.
configureCliErrors(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  process.stderr.write(`${errorLine(err)}\n`);
  process.exit(1);
}
