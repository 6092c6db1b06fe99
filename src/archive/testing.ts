import assert from 'node:assert/strict';
import { gzipSync } from 'node:zlib';
import * as yazl from 'yazl';
import * as tar from 'tar-stream';

/** Archive builders for tests (including deliberately malicious archives). Not used at runtime. */

export interface ZipItem {
  name: string;
  data?: string | Buffer;
  mode?: number;
  dir?: boolean;
  compress?: boolean;
}

/** yazl refuses unsafe names, so callers use same-length placeholders and patch the bytes. */
export async function makeZip(items: ZipItem[], patch: [string, string][] = []): Promise<Buffer> {
  const z = new yazl.ZipFile();
  for (const it of items) {
    if (it.dir) z.addEmptyDirectory(it.name, it.mode === undefined ? {} : { mode: it.mode });
    else {
      const data = typeof it.data === 'string' ? Buffer.from(it.data) : (it.data ?? Buffer.alloc(0));
      z.addBuffer(data, it.name, { compress: it.compress ?? true, ...(it.mode === undefined ? {} : { mode: it.mode }) });
    }
  }
  z.end();
  const chunks: Buffer[] = [];
  for await (const c of z.outputStream as AsyncIterable<Buffer>) chunks.push(c);
  let buf = Buffer.concat(chunks);
  for (const [from, to] of patch) {
    assert.equal(from.length, to.length);
    let i = buf.indexOf(from);
    assert.ok(i >= 0, `placeholder ${from} not found`);
    while (i >= 0) {
      buf.write(to, i, 'latin1');
      i = buf.indexOf(from, i + 1);
    }
  }
  buf = Buffer.from(buf);
  return buf;
}

export type TarItem = Partial<tar.Header> & { name: string; data?: string | Buffer };

export async function makeTarGz(items: TarItem[]): Promise<Buffer> {
  const p = tar.pack();
  const out: Buffer[] = [];
  const done = (async () => {
    for await (const c of p as AsyncIterable<Buffer>) out.push(c);
  })();
  for (const { data, ...h } of items) {
    await new Promise<void>((resolve, reject) => {
      p.entry(h, data ?? '', (err) => (err ? reject(err) : resolve()));
    });
  }
  p.finalize();
  await done;
  return gzipSync(Buffer.concat(out));
}

/** A zip of `files` (name -> content), optionally all under one top folder. */
export function zipOf(files: Record<string, string>, folder?: string): Promise<Buffer> {
  return makeZip(Object.entries(files).map(([name, data]) => ({ name: folder ? `${folder}/${name}` : name, data })));
}
