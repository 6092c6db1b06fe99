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

/** Added to the time of invocation ids: their first character is then above any older id's ('1'). */
const INVOCATION_EPOCH_OFFSET = 2 ** 45;
const HEX = '0123456789ABCDEF';

/**
 * Invocation ids: `inv-` + 12 upper-case hex chars of (ms + 2^45) + 16 random hex chars. The form
 * HAProxy mints with three cheap fetches (`date(0,ms),add(2^45),bytes(2),hex` and `rand,bytes(4),hex`
 * twice; the base32 form cost it 20 map lookups, a fifth of its work per request), so records of
 * both data planes sort together by time. The offset makes them sort after ids of the older base32
 * form ('inv-1…'), so trimming never drops new records before old ones.
 */
export function newInvocationId(nowMs: number = Date.now()): string {
  let r = '';
  for (let i = 0; i < 8; i++) {
    const b = nextRandomByte();
    r += (HEX[b >> 4] as string) + (HEX[b & 15] as string);
  }
  return `inv-${(nowMs + INVOCATION_EPOCH_OFFSET).toString(16).toUpperCase().padStart(12, '0')}${r}`;
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
