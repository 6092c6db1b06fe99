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
  const rnd = randomBytes(11);
  let r = '';
  for (const b of rnd) r += ALPHABET[b % 32];
  return `${prefix}-${t}${r}`;
}
