/**
 * Bounded property-based fuzzing of the archive parser: whatever bytes arrive (random, or a real
 * zip / tar.gz with hostile entries, then corrupted), validation either succeeds or fails with a
 * 4xx AetherError. Never a 500, a crash or a hang. Fixed seed and run counts keep it a few seconds.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { isAetherError } from '../core/index.ts';
import { validateArchive, type ArchiveLimits } from './index.ts';
import { makeTarGz, makeZip, type TarItem, type ZipItem } from './testing.ts';

const LIMITS: ArchiveLimits = { maxArchiveBytes: 1024 * 1024, maxUnpackedBytes: 256 * 1024, maxEntries: 40 };
const SEED = Number(process.env["FUZZ_SEED"] ?? 8_2026);

async function outcome(buf: Buffer): Promise<string> {
  try {
    await validateArchive(buf, LIMITS, 'handler.js');
    return 'ok';
  } catch (err) {
    assert.ok(isAetherError(err), `not a coded error: ${String(err)}`);
    assert.ok(err.status >= 400 && err.status < 500, `${err.code} (${err.status}): ${err.message}`);
    return err.code;
  }
}

const part = fc.constantFrom('handler.js', 'a', 'b', 'dir', '..', '.', '', 'x'.repeat(120), 'ü', 'a\\b', 'C:');
const entryName = fc.array(part, { minLength: 1, maxLength: 4 }).map((ps) => ps.join('/'));
const linkTarget = fc.oneof(entryName, fc.constantFrom('/etc/passwd', '../../x', 'handler.js', 'a', 'a/b', '.'));
const data = fc.oneof(fc.string({ maxLength: 40 }), fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)));

// A few names shared by entries and link targets, so links point at each other (chains, loops, self).
const near = fc.constantFrom('a', 'b', 'c', 'handler.js', 'd/a', 'd');
const linkWorld: fc.Arbitrary<TarItem> = fc.oneof(
  fc.record({ name: near, data, type: fc.constant('file' as const) }),
  fc.record({ name: near, type: fc.constantFrom('symlink' as const, 'link' as const), linkname: near }),
);

const tarItem: fc.Arbitrary<TarItem> = fc.oneof(
  linkWorld,
  linkWorld,
  fc.record({ name: entryName, data, type: fc.constant('file' as const), mode: fc.constantFrom(0o644, 0o755, 0o4755, 0o777) }),
  fc.record({ name: entryName, type: fc.constant('directory' as const) }),
  fc.record({ name: entryName, type: fc.constant('symlink' as const), linkname: linkTarget }),
  fc.record({ name: entryName, type: fc.constant('link' as const), linkname: linkTarget }),
  fc.record({ name: entryName, type: fc.constantFrom('fifo' as const, 'character-device' as const) }),
);

// yazl refuses unsafe names itself: those cases come from the mutations below.
const zipItem: fc.Arbitrary<ZipItem> = fc.record({
  name: fc.array(fc.constantFrom('handler.js', 'a', 'b', 'dir', 'x'.repeat(60)), { minLength: 1, maxLength: 3 }).map((ps) => ps.join('/')),
  data,
  compress: fc.boolean(),
  mode: fc.constantFrom(0o100644, 0o100755, 0o120777),
});

/** Flip bytes, cut the end or splice garbage into a valid archive. */
const mutation = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ kind: fc.constant('cut' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('none' as const) }),
);

function mutate(buf: Buffer, ms: { kind: 'flip' | 'cut' | 'none'; at?: number; byte?: number }[]): Buffer {
  let out = Buffer.from(buf);
  for (const m of ms) {
    if (out.length === 0) break;
    const at = (m.at ?? 0) % out.length;
    if (m.kind === 'flip') out[at] = m.byte ?? 0;
    else if (m.kind === 'cut') out = out.subarray(0, Math.max(1, at));
  }
  return out;
}

test('fuzz: random bytes, with and without archive magic, are a 4xx or accepted', { timeout: 60_000 }, async () => {
  const magic = fc.constantFrom(Buffer.alloc(0), Buffer.from('PK\x03\x04', 'latin1'), Buffer.from('PK\x05\x06', 'latin1'), Buffer.from([0x1f, 0x8b, 0x08]));
  await fc.assert(
    fc.asyncProperty(magic, fc.uint8Array({ maxLength: 512 }), async (m, rest) => {
      await outcome(Buffer.concat([m, Buffer.from(rest)]));
    }),
    { numRuns: 120, seed: SEED },
  );
});

test('fuzz: hostile tar.gz archives, corrupted or not, are a 4xx or accepted', { timeout: 60_000 }, async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(tarItem, { maxLength: 8 }), fc.array(mutation, { maxLength: 2 }), async (items, ms) => {
      let buf: Buffer;
      try {
        buf = await makeTarGz(items);
      } catch {
        return; // the builder itself refused the header (e.g. a name too long): nothing to test
      }
      await outcome(mutate(buf, ms));
    }),
    { numRuns: 120, seed: SEED },
  );
});

test('fuzz: zip archives, corrupted or not, are a 4xx or accepted', { timeout: 60_000 }, async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(zipItem, { maxLength: 6 }), fc.array(mutation, { maxLength: 3 }), async (items, ms) => {
      let buf: Buffer;
      try {
        buf = await makeZip(items);
      } catch {
        return;
      }
      await outcome(mutate(buf, ms));
    }),
    { numRuns: 120, seed: SEED },
  );
});
