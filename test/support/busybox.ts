import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
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

/** busyboxRoot (with addLinkProbe for `linkProbe`) built into an ext4 image, `<dir>/web.ext4`, by `aether image build` (as users build theirs). */
export function busyboxImage(dir: string, page: string, opts: { linkProbe?: string } = {}): { root: string; image: string } {
  const root = busyboxRoot(dir, page);
  if (opts.linkProbe) addLinkProbe(root, opts.linkProbe);
  const image = join(dir, 'web.ext4');
  execFileSync(process.execPath, [AETHER_BIN, 'image', 'build', root, '-o', image], { stdio: 'ignore', timeout: 300_000 });
  return { root, image };
}

/**
 * Adds `/www/cgi-bin/get` to a busybox root: `GET /cgi-bin/get?<url>` makes the service's program
 * itself fetch <url> (default: the value of the env variable named `linkEnv`, a link) with
 * busybox wget and answers `OK <body>` or `FAILED <error>`: what a program in that sandbox reaches.
 */
export function addLinkProbe(root: string, linkEnv = 'B_URL'): void {
  mkdirSync(join(root, 'www', 'cgi-bin'), { recursive: true });
  const script = join(root, 'www', 'cgi-bin', 'get');
  writeFileSync(
    script,
    [
      '#!/bin/busybox sh',
      // (httpd passes the CGI's header lines on as they are: HTTP wants CRLF)
      "printf 'Content-Type: text/plain\\r\\n\\r\\n'",
      `u="\${QUERY_STRING:-$${linkEnv}}"`,
      // (no -T: busybox 1.35's wget segfaults with it; every failure expected here is immediate)
      'if out=$(/bin/busybox wget -q -O - "$u" 2>/dev/null); then echo "OK $out"; else echo "FAILED $u: $(/bin/busybox wget -O /dev/null "$u" 2>&1 | /bin/busybox tail -n 1)"; fi',
      '',
    ].join('\n'),
  );
  chmodSync(script, 0o755);
}
