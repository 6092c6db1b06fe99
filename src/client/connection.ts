import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

export const DEFAULT_URL = 'http://127.0.0.1:8080';
export const DEFAULT_DATA_DIR = './.aether';

export interface ConnectionInput {
  url?: string | undefined;
  token?: string | undefined;
  dataDir?: string | undefined;
  env?: NodeJS.ProcessEnv | undefined;
}

/**
 * Where to reach the platform and with which token. Each comes from the flag, else the env var,
 * else the file `aether up` writes into its data dir, so a local `aether up` needs no setup.
 */
export async function resolveConnection(opts: ConnectionInput): Promise<{ url: string; token: string | undefined; urlFrom: string; dataDir: string }> {
  const env = opts.env ?? process.env;
  const dataDir = nonEmpty(opts.dataDir) ?? nonEmpty(env.AETHER_DATA_DIR) ?? DEFAULT_DATA_DIR;
  const urlFile = join(dataDir, 'url');
  const fromFile = nonEmpty(opts.url) || nonEmpty(env.AETHER_URL) ? undefined : await readTrimmed(urlFile);
  const url = nonEmpty(opts.url) ?? nonEmpty(env.AETHER_URL) ?? fromFile ?? DEFAULT_URL;
  // Said when the URL cannot be reached: which setting to look at.
  const urlFrom = nonEmpty(opts.url) ? '--url' : nonEmpty(env.AETHER_URL) ? 'AETHER_URL' : fromFile ? urlFile : `the default (no ${urlFile})`;
  const token = nonEmpty(opts.token) ?? nonEmpty(env.AETHER_ADMIN_TOKEN) ?? (await readTrimmed(join(dataDir, 'admin.token')));
  return { url, token, urlFrom, dataDir };
}

function nonEmpty(s: string | undefined): string | undefined {
  return s === undefined || s.trim() === '' ? undefined : s.trim();
}

async function readTrimmed(path: string): Promise<string | undefined> {
  try {
    return nonEmpty(await readFile(path, 'utf8'));
  } catch (err) {
    // A missing (or unreadable-as-dir) file just means "not written by aether up here".
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return undefined;
    throw err;
  }
}
