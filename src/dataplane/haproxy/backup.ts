import { chmodSync, rmSync } from 'node:fs';
import type { IncomingMessage, Server as HttpServer } from 'node:http';
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import { CLUSTER_TOKEN_HEADER } from '../../core/index.ts';
import { activatorRequest } from './config.ts';

/** Node's http.Server keeps the `shouldUpgradeCallback` option as a property (Node >= 24). */
type UpgradeDecider = (req: IncomingMessage) => boolean;

/**
 * The activator's listener for HAProxy's backup servers: a unix socket (0600; its directory is 0700,
 * so only HAProxy, running as the platform's user, connects). Its connections are served by the
 * activator's own HTTP server, and only their requests get the public URI back (`activatorRequest`):
 * a client's `Via` through the public port is never read.
 *
 * The rewrite runs before the server decides whether a request is an upgrade (its
 * `shouldUpgradeCallback` looks at the path: a WebSocket handed over with the stripped path would
 * otherwise be served as a plain request) and again, for the others, before any 'request' listener.
 */
export async function listenActivatorBackup(o: { path: string; server: HttpServer; tokenOk: (token: string) => boolean }): Promise<{ close(): void }> {
  const sockets = new Set<Socket>();
  const rewrite = (req: IncomingMessage): void => {
    if (!sockets.has(req.socket)) return;
    const token = req.headers[CLUSTER_TOKEN_HEADER];
    const r = activatorRequest(req.url ?? '/', req.headers.via, () => typeof token === 'string' && o.tokenOk(token));
    if (r === undefined) return; // not handed over by a function backend, or already rebuilt
    req.url = r.url;
    // What the client sent (or nothing): the program sees what it would have seen from HAProxy.
    if (r.via === undefined) delete req.headers.via;
    else req.headers.via = r.via;
  };
  const server = o.server as HttpServer & { shouldUpgradeCallback?: UpgradeDecider };
  const decide = server.shouldUpgradeCallback;
  if (typeof decide === 'function') {
    server.shouldUpgradeCallback = function (this: HttpServer, req: IncomingMessage): boolean {
      rewrite(req);
      return decide.call(this, req);
    };
  }
  server.prependListener('request', rewrite);
  rmSync(o.path, { force: true });
  const srv: NetServer = createNetServer((sock) => {
    sockets.add(sock);
    sock.once('close', () => sockets.delete(sock));
    server.emit('connection', sock);
  });
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(o.path, () => resolve());
  });
  chmodSync(o.path, 0o600);
  return {
    close: () => {
      srv.close();
      server.off('request', rewrite);
      if (typeof decide === 'function') server.shouldUpgradeCallback = decide;
    },
  };
}
