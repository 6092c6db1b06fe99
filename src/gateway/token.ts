import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { AetherError } from '../core/index.ts';

export interface AdminToken {
  token: string;
  source: 'env' | 'file' | 'generated';
  /** The token file read or written (not set for `env`). */
  path?: string;
}

/**
 * The admin bearer token for /api/*: AETHER_ADMIN_TOKEN if set; else the token file
 * (`tokenFile`, default `<dataDir>/admin.token`) if present; else 32 random bytes (hex) written
 * to that file with mode 0600 (created exclusively, so two processes starting together agree).
 */
export async function loadAdminToken(opts: { dataDir?: string; env?: NodeJS.ProcessEnv; tokenFile?: string }): Promise<AdminToken> {
  const env = opts.env ?? process.env;
  const fromEnv = env['AETHER_ADMIN_TOKEN']?.trim();
  if (fromEnv) return { token: fromEnv, source: 'env' };

  const path = opts.tokenFile ?? (opts.dataDir !== undefined ? join(opts.dataDir, 'admin.token') : undefined);
  if (path === undefined) {
    throw new AetherError('AETHER_ERR_VALIDATION', 'no admin token: set AETHER_ADMIN_TOKEN or give a data dir / token file');
  }
  const existing = await readToken(path);
  if (existing !== undefined) return { token: existing, source: 'file', path };

  const token = randomBytes(32).toString('hex');
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  try {
    await writeFile(path, `${token}\n`, { mode: 0o600, flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    const raced = await readToken(path);
    if (raced === undefined) throw new AetherError('AETHER_ERR_VALIDATION', `admin token file ${path} is empty`);
    return { token: raced, source: 'file', path };
  }
  await chmod(path, 0o600); // in case the umask narrowed or the mode was ignored
  return { token, source: 'generated', path };
}

async function readToken(path: string): Promise<string | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  const t = text.trim();
  if (!t) throw new AetherError('AETHER_ERR_VALIDATION', `admin token file ${path} is empty`);
  return t;
}

/** Constant-time check of an `Authorization` header against the token. */
export function checkBearer(header: string | undefined, token: string): boolean {
  if (!header) return false;
  const m = /^bearer\s+(\S+)\s*$/i.exec(header);
  if (!m) return false;
  // Hash first so the comparison is constant-time regardless of length.
  const a = createHash('sha256').update(m[1] as string).digest();
  const b = createHash('sha256').update(token).digest();
  return timingSafeEqual(a, b);
}
