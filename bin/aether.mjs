#!/usr/bin/env node
// Entry for the `aether` command. The code is TypeScript run by Node's built-in type stripping
// (Node >= 24, which npm provides through the `node` dependency). If an older node started us,
// re-exec on the bundled one so `aether` works from any shell (npm link, npm i -g, node_modules/.bin).
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const major = Number(process.versions.node.split('.')[0]);
if (major < 24) {
  const require = createRequire(import.meta.url);
  let nodeBin;
  try {
    nodeBin = require.resolve('node/bin/node');
  } catch {
    console.error(`aether: needs Node >= 24 (found ${process.version}); run \`npm ci\` in the aether checkout to install the bundled one`);
    process.exit(1);
  }
  // The child watches AETHER_LAUNCHER_PID and stops if this wrapper dies; signals sent to the
  // wrapper (a process manager knows only its pid) are passed on, and we exit the way it did.
  const child = spawn(nodeBin, [fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
    stdio: 'inherit',
    env: { ...process.env, AETHER_LAUNCHER_PID: String(process.pid) },
  });
  const forward = (signal) => () => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
  };
  for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, forward(signal));
  child.on('error', (err) => {
    console.error(`aether: cannot start ${nodeBin}: ${err.message}`);
    process.exit(1);
  });
  child.on('exit', (code, signal) => {
    if (signal) {
      process.removeAllListeners(signal);
      process.kill(process.pid, signal);
    }
    process.exit(code ?? 1);
  });
} else {
  await import('../src/bin/aether.ts');
}
