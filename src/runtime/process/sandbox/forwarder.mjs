// Per-instance forwarder (namespaces mode). Runs as root in the instance's network namespace (it is
// started in a fresh one with `unshare --net`, and the instance joins it), outside the instance's
// cgroup and mount namespace. Started ahead of need (a warm pool), so its own node start-up is not
// on the cold-start path.
//   argv: <temporary socket path>      stdout: "listening" once bound, "ready" once published
//   stdin, one line when assigned: "<socket path> <port>"
// After assignment it probes the program's port on the namespace's loopback (a TCP connect every
// 2 ms: reading /proc/net/tcp costs ~10 ms per read on a big host), then renames its socket to the
// public path and prints "ready". Each connection to the socket is piped to the program's port.
import net from 'node:net';
import { renameSync, unlinkSync } from 'node:fs';

const tmpPath = process.argv[2];
if (!tmpPath) {
  process.stderr.write('usage: forwarder.mjs <temporary socket path>\n');
  process.exit(2);
}
const HOSTS = ['127.0.0.1', '::1'];
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
    renameSync(tmpPath, sockPath);
    process.stdout.write('ready\n');
  });
  s.once('error', () => {
    s.destroy();
    if (i % HOSTS.length === HOSTS.length - 1) setTimeout(() => probe(i + 1), 2);
    else probe(i + 1);
  });
}

const server = net.createServer({ pauseOnConnect: true }, (client) => {
  client.on('error', () => {});
  const upstream = net.connect({ host, port });
  upstream.once('error', () => client.destroy());
  upstream.once('connect', () => {
    upstream.setNoDelay(true);
    upstream.on('error', () => client.destroy());
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
    client.pipe(upstream);
    upstream.pipe(client);
    client.resume();
  });
});
server.on('error', (err) => {
  process.stderr.write(`forwarder: ${err.message}\n`);
  process.exit(1);
});
try {
  unlinkSync(tmpPath);
} catch {
  // no stale socket
}
server.listen(tmpPath, () => {
  bound = true;
  process.stdout.write('listening\n');
  if (port) probe();
});

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
// the agent closing our stdin (or dying: pdeathsig) ends us
process.stdin.on('end', () => process.exit(0));
process.on('SIGTERM', () => process.exit(0));
