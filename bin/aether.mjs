#!/usr/bin/env node
// Entry for `npx aether`. The code is TypeScript run by Node's built-in type stripping (Node >= 24,
// which npm provides through the `node` dependency). If an older node started us, re-exec on the
// bundled one so `./node_modules/.bin/aether` works from any shell too.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const major = Number(process.versions.node.split('.')[0]);
if (major < 24) {
  const require = createRequire(import.meta.url);
  let nodeBin;
  try {
    nodeBin = require.resolve('node/bin/node');
  } catch {
    console.error(`aether: needs Node >= 24 (found ${process.version}); run \`npm ci\` to install the bundled one`);
    process.exit(1);
  }
  const r = spawnSync(nodeBin, [fileURLToPath(import.meta.url), ...process.argv.slice(2)], { stdio: 'inherit' });
  process.exit(r.status ?? 1);
}
await import('../src/bin/aether.ts');
