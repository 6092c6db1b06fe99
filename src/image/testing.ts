/** Test helpers: image archives built in memory with tar-stream (docker save and OCI layout). */
import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import * as tar from 'tar-stream';

export interface LayerEntry {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link';
  data?: string | Buffer;
  linkname?: string;
  mode?: number;
  uid?: number;
  gid?: number;
}

export async function makeTar(entries: { name: string; data: Buffer }[] | LayerEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const done = new Promise<void>((resolve, reject) => {
    pack.on('data', (c: unknown) => chunks.push(c as Buffer));
    pack.on('end', () => resolve());
    pack.on('error', reject);
  });
  for (const e of entries as LayerEntry[]) {
    const type = e.type ?? 'file';
    const data = type === 'file' ? Buffer.from(e.data ?? '') : undefined;
    const header = {
      name: e.name,
      type,
      mode: e.mode ?? (type === 'directory' ? 0o755 : 0o644),
      uid: e.uid ?? 0,
      gid: e.gid ?? 0,
      mtime: new Date(1_700_000_000_000),
      ...(e.linkname !== undefined ? { linkname: e.linkname } : {}),
    };
    if (data) pack.entry(header, data);
    else pack.entry(header);
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}

export interface ImageConfigInput {
  User?: string;
  WorkingDir?: string;
  Env?: string[];
  Entrypoint?: string[];
  Cmd?: string[];
  Volumes?: Record<string, object>;
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

function configBlob(cfg: ImageConfigInput, layers: Buffer[]): Buffer {
  return Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: cfg, rootfs: { type: 'layers', diff_ids: layers.map((l) => `sha256:${sha(l)}`) } }));
}

/** A `docker save` tarball: manifest.json + <id>/layer.tar + <config>.json. */
export async function makeDockerSave(layers: LayerEntry[][], cfg: ImageConfigInput): Promise<Buffer> {
  const tars = await Promise.all(layers.map((l) => makeTar(l)));
  const config = configBlob(cfg, tars);
  const configName = `${sha(config)}.json`;
  const layerNames = tars.map((t) => `${sha(t)}/layer.tar`);
  const manifest = Buffer.from(JSON.stringify([{ Config: configName, RepoTags: ['test:latest'], Layers: layerNames }]));
  return makeTar([
    ...tars.map((t, i) => ({ name: layerNames[i] as string, data: t })),
    { name: configName, data: config },
    { name: 'manifest.json', data: manifest },
  ]);
}

/** An OCI image layout tar (index.json → image index → manifest → gzip layers), blobs by digest. */
export async function makeOciLayout(layers: LayerEntry[][], cfg: ImageConfigInput): Promise<Buffer> {
  const tars = await Promise.all(layers.map((l) => makeTar(l)));
  const gz = tars.map((t) => gzipSync(t));
  const config = configBlob(cfg, tars);
  const desc = (mediaType: string, b: Buffer): object => ({ mediaType, digest: `sha256:${sha(b)}`, size: b.length });
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: desc('application/vnd.oci.image.config.v1+json', config),
    layers: gz.map((g) => desc('application/vnd.oci.image.layer.v1.tar+gzip', g)),
  }));
  // A multi-platform index in front of the manifest, as registries publish them.
  const other = Buffer.from(JSON.stringify({ schemaVersion: 2, config: desc('application/vnd.oci.image.config.v1+json', Buffer.from('{}')), layers: [] }));
  const imageIndex = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.index.v1+json',
    manifests: [
      { ...desc('application/vnd.oci.image.manifest.v1+json', other), platform: { os: 'linux', architecture: 'arm64' } },
      { ...desc('application/vnd.oci.image.manifest.v1+json', manifest), platform: { os: 'linux', architecture: 'amd64' } },
    ],
  }));
  const index = Buffer.from(JSON.stringify({ schemaVersion: 2, manifests: [desc('application/vnd.oci.image.index.v1+json', imageIndex)] }));
  const blobs = [config, manifest, other, imageIndex, ...gz];
  return makeTar([
    { name: 'oci-layout', data: Buffer.from('{"imageLayoutVersion":"1.0.0"}') },
    { name: 'index.json', data: index },
    ...blobs.map((b) => ({ name: `blobs/sha256/${sha(b)}`, data: b })),
  ]);
}
