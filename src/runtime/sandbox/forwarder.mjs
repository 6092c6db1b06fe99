// Runs as root inside an instance's network namespace (nsenter --net), outside its cgroup and
// mount namespace: accepts connections on a unix socket on the host's filesystem and pipes each to
// the program's port on the namespace's loopback. Usage: node forwarder.mjs <socket path> <port>
import net from 'node:net';
import { renameSync, unlinkSync } from 'node:fs';

const [sockPath, portArg] = process.argv.slice(2);
const port = Number(portArg);
if (!sockPath || !Number.isInteger(port)) {
  process.stderr.write('usage: forwarder.mjs <socket path> <port>\n');
  process.exit(2);
}

function connect(client, hosts) {
  const [host, ...rest] = hosts;
  const upstream = net.connect({ host, port });
  upstream.once('error', (err) => {
    // a program listening on ::1 only: try the next loopback address
    if (err.code === 'ECONNREFUSED' && rest.length > 0 && !upstream.bytesWritten) return connect(client, rest);
    client.destroy();
  });
  upstream.once('connect', () => {
    upstream.setNoDelay(true);
    client.pipe(upstream);
    upstream.pipe(client);
    upstream.on('error', () => client.destroy());
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
    client.resume();
  });
}

const server = net.createServer({ pauseOnConnect: true }, (client) => {
  client.on('error', () => {});
  connect(client, ['127.0.0.1', '::1']);
});
// bind under a temporary name and rename once listening: the socket's path appearing means ready
const tmpPath = `${sockPath}.${process.pid}.tmp`;
try {
  unlinkSync(tmpPath);
} catch {
  // no stale socket
}
server.listen(tmpPath, () => renameSync(tmpPath, sockPath));
server.on('error', (err) => {
  process.stderr.write(`forwarder: ${err.message}\n`);
  process.exit(1);
});
process.on('SIGTERM', () => {
  try {
    unlinkSync(sockPath);
  } catch {
    // already removed
  }
  process.exit(0);
});
