// `npm run build:guest`: builds build/guest/aether-init (static, musl) from src/guest/*.c.
import { ensureGuestInit } from './index.ts';

const g = await ensureGuestInit({ force: process.argv.includes('--force') });
process.stdout.write(`${g.path} (${g.size} bytes, sha256 ${g.sha256.slice(0, 12)})\n`);
