// Runs inside a Firecracker VM's network namespace (ip netns exec). argv: <socket path> <guest ip> <port>.
// Probes the guest's port until it accepts, then binds the unix socket (under a temporary name,
// renamed into place, so the socket's existence means "ready") and prints "ready". Each connection
// to the socket is piped to the guest's port. It runs in its own session with its output going to
// a file: nothing of it depends on the agent that started it, which may die and be replaced.
import net from 'node:net';
import { renameSync, rmSync } from 'node:fs';

const [sock, host, portText] = process.argv.slice(2);
const port = Number(portText);
if (!sock || !host || !port) {
  process.stderr.write('usage: guest-forwarder.mjs <socket path> <guest ip> <port>\n');
  process.exit(2);
}

function probe() {
  const s = net.connect({ host, port });
  s.once('connect', () => {
    s.destroy();
    publish();
  });
  s.once('error', () => {
    s.destroy();
    setTimeout(probe, 20);
  });
}

function publish() {
  const tmp = `${sock}.tmp`;
  rmSync(tmp, { force: true });
  const server = net.createServer({ pauseOnConnect: true }, (client) => {
    client.on('error', () => {});
    const upstream = net.connect({ host, port });
    upstream.once('error', () => client.destroy());
    upstream.once('connect', () => {
      upstream.on('error', () => client.destroy());
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
    });
  });
  server.on('error', (err) => {
    process.stderr.write(`${err.message}\n`);
    process.exit(1);
  });
  server.listen(tmp, () => {
    renameSync(tmp, sock);
    process.stdout.write('ready\n');
  });
}

probe();
