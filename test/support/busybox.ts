import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AETHER_BIN } from './platform.ts';

/** Why the busybox web service cannot be made here, or undefined when it can. */
export function busyboxMissing(): string | undefined {
  return existsSync('/bin/busybox') ? undefined : 'busybox-static is not installed';
}

/**
 * `<dir>/root`: /bin/busybox and /www/index.html holding `page`, the root of the services the tests
 * run (`/bin/busybox httpd -h /www`). Static busybox needs nothing else in the root.
 */
export function busyboxRoot(dir: string, page: string): string {
  const root = join(dir, 'root');
  mkdirSync(join(root, 'bin'), { recursive: true });
  mkdirSync(join(root, 'www'), { recursive: true });
  copyFileSync('/bin/busybox', join(root, 'bin', 'busybox'));
  writeFileSync(join(root, 'www', 'index.html'), page);
  return root;
}

/** busyboxRoot built into an ext4 image, `<dir>/web.ext4`, by `aether image build` (as users build theirs). */
export function busyboxImage(dir: string, page: string): { root: string; image: string } {
  const root = busyboxRoot(dir, page);
  const image = join(dir, 'web.ext4');
  execFileSync(process.execPath, [AETHER_BIN, 'image', 'build', root, '-o', image], { stdio: 'ignore', timeout: 300_000 });
  return { root, image };
}
