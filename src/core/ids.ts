import { randomBytes } from 'node:crypto';

const ALPHABET = '0123456789abcdefghijklmnopqrstuv';

/**
 * Time-sortable unique id: 9 chars of milliseconds + 11 random chars, base32 lower-case
 * (like upstream's 20-char xid). Lexical order = creation order, which invocation records use.
 */
export function newId(prefix: string, nowMs: number = Date.now()): string {
  let t = '';
  let n = nowMs;
  for (let i = 0; i < 9; i++) {
    t = ALPHABET[n % 32] + t;
    n = Math.floor(n / 32);
  }
  let r = '';
  for (let i = 0; i < 11; i++) r += ALPHABET[nextRandomByte() % 32];
  return `${prefix}-${t}${r}`;
}

// Ids are minted on every invocation: draw random bytes in blocks instead of one syscall per id.
let pool = Buffer.alloc(0);
let offset = 0;
function nextRandomByte(): number {
  if (offset >= pool.length) {
    pool = randomBytes(4096);
    offset = 0;
  }
  return pool[offset++] as number;
}
