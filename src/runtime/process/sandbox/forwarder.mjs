// Per-instance forwarder (namespaces mode). Runs as root in the instance's network namespace (it is
// started in a fresh one with `unshare --net`, and the instance joins it), outside the instance's
// cgroup and mount namespace. Started ahead of need (a warm pool), so its own node start-up is not
// on the cold-start path.
//   argv: <temporary socket path>      stdout: "listening" once bound, "ready" once published
//   stdin, one line when assigned: "<socket path> <port>"
// After assignment it probes the program's port on the namespace's loopback (a TCP connect every
// 2 ms: reading /proc/net/tcp costs ~10 ms per read on a big host), then renames its socket to the
// public path and prints "ready". Each connection to the socket is piped to the program's port.
// The first byte the forwarder sends on a connection is 0x01, right before the program's first byte
// (or before passing on the program's clean close, FIN: it had read what it got). A connection
// closed without that byte never reached the program: connecting failed, or the program's side was
// reset (RST: closed with our bytes unread, e.g. still in the accept queue of a program being
// killed), so the agent may send the request elsewhere. The byte comes before anything of the
// program, which therefore cannot forge the signal. See src/runtime/endpoint.ts.
// The plain <socket>.raw twin (for HAProxy) has no such byte: it is closed and removed as soon as the
// program is found gone, so HAProxy's next connect fails and it retries elsewhere (docs/dataplane.md).
import net from 'node:net';
import { renameSync, unlinkSync } from 'node:fs';

const tmpPath = process.argv[2];
if (!tmpPath) {
  process.stderr.write('usage: forwarder.mjs <temporary socket path>\n');
  process.exit(2);
}
const HOSTS = ['127.0.0.1', '::1'];
const PREAMBLE = Buffer.from([0x01]);
let port = 0;
let sockPath = '';
// the address the program answered on (it may listen on ::1 only)
let host = HOSTS[0];
let bound = false;

function probe(i = 0) {
  const h = HOSTS[i % HOSTS.length];
  const s = net.connect({ host: h, port });
  s.once('connect', () => {
    s.destroy();
    host = h;
    // the raw socket first: whoever sees <path> finds <path>.raw too
    renameSync(`${tmpPath}.raw`, `${sockPath}.raw`);
    renameSync(tmpPath, sockPath);
    process.stdout.write('ready\n');
  });
  s.once('error', () => {
    s.destroy();
    if (i % HOSTS.length === HOSTS.length - 1) setTimeout(() => probe(i + 1), 2);
    else probe(i + 1);
  });
}

// The raw socket cannot tell its client that a request never reached the program (no preamble), so
// once the program is gone it stops existing: later connects fail, which HAProxy retries elsewhere
// (another instance, or the activator) without the risk of replaying a request a program read.
let rawGone = false;
function dropRaw() {
  if (rawGone || !sockPath) return;
  rawGone = true;
  raw.close();
  try {
    unlinkSync(`${sockPath}.raw`);
  } catch {
    // already gone
  }
}
/**
 * Calls back with whether the program still accepts connections. A dying process may release its
 * connections before its listening socket, which then still completes a connect and resets it a
 * moment later: so a connect counts only if the connection stays open for HOLD_MS.
 */
const HOLD_MS = 10;
function alive(cb) {
  const s = net.connect({ host, port });
  let done = false;
  const finish = (ok) => {
    if (done) return;
    done = true;
    s.destroy();
    cb(ok);
  };
  s.once('connect', () => setTimeout(() => finish(true), HOLD_MS));
  s.once('error', () => finish(false));
  s.once('end', () => finish(false));
  s.once('close', () => finish(false));
}

// Two sockets: <path> with the preamble (the agent's own proxy, which reads the byte) and
// <path>.raw without it, for native proxies (HAProxy) that speak plain HTTP and retry by themselves.
const serve = (preamble) => net.createServer({ pauseOnConnect: true }, (client) => {
  client.on('error', () => {});
  const upstream = net.connect({ host, port });
  upstream.once('error', () => {
    // connecting failed: the program is gone (this one client still sees a bare close)
    if (!preamble) dropRaw();
    client.destroy();
  });
  upstream.once('connect', () => {
    upstream.setNoDelay(true);
    let answered = false;
    const answer = () => {
      if (answered) return;
      answered = true;
      if (preamble) client.write(PREAMBLE);
    };
    upstream.on('data', (chunk) => {
      answer();
      if (!client.write(chunk)) {
        upstream.pause();
        client.once('drain', () => upstream.resume());
      }
    });
    // On the raw socket, the program's side closing may mean it died (SIGKILL, OOM): check before
    // passing the close on, so the socket is gone by the time HAProxy reconnects.
    // One check per connection; callbacks keep their order. Not when the client closed first.
    let waiting;
    const then = (fn) => {
      if (preamble || rawGone || client.destroyed || waiting === null) return fn();
      if (waiting) return waiting.push(fn);
      waiting = [fn];
      alive((ok) => {
        if (!ok) dropRaw();
        const fns = waiting;
        waiting = null;
        for (const f of fns) f();
      });
    };
    // FIN: the program closed after reading (it had the request): say so, then close
    upstream.on('end', () => {
      answer();
      then(() => client.end());
    });
    // RST before any answer: nothing was read: close without the byte
    upstream.on('error', () => then(() => client.destroy()));
    upstream.on('close', () => then(() => {
      if (!client.writableEnded) client.destroy();
    }));
    client.on('close', () => upstream.destroy());
    client.pipe(upstream);
    client.resume();
  });
});
const server = serve(true);
const raw = serve(false);
let listening = 0;
for (const [srv, path] of [[server, tmpPath], [raw, `${tmpPath}.raw`]]) {
  srv.on('error', (err) => {
    process.stderr.write(`forwarder: ${err.message}\n`);
    process.exit(1);
  });
  try {
    unlinkSync(path);
  } catch {
    // no stale socket
  }
  srv.listen(path, () => {
    if (++listening < 2) return;
    bound = true;
    process.stdout.write('listening\n');
    if (port) probe();
  });
}

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  if (port) return;
  input += chunk;
  const nl = input.indexOf('\n');
  if (nl === -1) return;
  const [path, p] = input.slice(0, nl).split(' ');
  if (!path || !Number.isInteger(Number(p))) {
    process.stderr.write(`forwarder: bad assignment ${JSON.stringify(input.slice(0, nl))}\n`);
    process.exit(2);
  }
  sockPath = path;
  port = Number(p);
  if (bound) probe();
});
// Before an assignment, the agent closing our stdin (or dying) ends us: an unused spare. After it we
// serve on, so an instance outlives a restarting agent (which adopts it); whoever no longer wants
// the instance kills us. A dead agent's pipes must not crash us either.
process.stdin.on('end', () => {
  if (!port) process.exit(0);
});
process.stdout.on('error', () => {});
process.stderr.on('error', () => {});
process.on('SIGTERM', () => process.exit(0));

