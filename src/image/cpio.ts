/** A cpio "newc" archive writer: the format the kernel unpacks as an initramfs. */

export interface CpioEntry {
  /** Path inside the archive, without a leading slash. */
  name: string;
  type: 'file' | 'dir' | 'symlink' | 'chardev';
  mode: number;
  data?: Buffer;
  /** symlink target */
  target?: string;
  /** chardev major/minor */
  rdev?: [number, number];
}

const TYPE_BITS = { file: 0o100000, dir: 0o040000, symlink: 0o120000, chardev: 0o020000 } as const;

function hex8(n: number): string {
  return n.toString(16).padStart(8, '0');
}

function pad4(len: number): Buffer {
  return Buffer.alloc((4 - (len % 4)) % 4);
}

function record(ino: number, name: string, mode: number, body: Buffer, rdev: [number, number] = [0, 0], nlink = 1): Buffer[] {
  const nameBuf = Buffer.from(`${name}\0`);
  // uid/gid 0 and mtime 0: the archive depends only on its content (stable cache keys).
  const header = Buffer.from(
    '070701' +
      [ino, mode, 0, 0, nlink, 0, body.length, 0, 0, rdev[0], rdev[1], nameBuf.length, 0].map(hex8).join(''),
    'ascii',
  );
  return [header, nameBuf, pad4(header.length + nameBuf.length), body, pad4(body.length)];
}

export function writeCpio(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  for (const e of entries) {
    const body = e.type === 'file' ? (e.data ?? Buffer.alloc(0)) : e.type === 'symlink' ? Buffer.from(e.target ?? '') : Buffer.alloc(0);
    parts.push(...record(ino++, e.name, TYPE_BITS[e.type] | (e.mode & 0o7777), body, e.rdev, e.type === 'dir' ? 2 : 1));
  }
  parts.push(...record(0, 'TRAILER!!!', 0, Buffer.alloc(0), [0, 0], 1));
  return Buffer.concat(parts);
}
