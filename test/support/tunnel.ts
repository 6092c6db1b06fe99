import { request } from 'node:http';

/**
 * An Upgrade request (`upgrade: x-echo`) to `url`: sends "ping" through the tunnel and resolves
 * with everything the far side sent back up to and including the echoed "ping" (the bytes that came
 * with the 101 first). Rejects on any answer but 101.
 */
export function tunnelPing(url: string, headers: Record<string, string> = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request(url, { headers: { ...headers, connection: 'Upgrade', upgrade: 'x-echo' } });
    req.on('upgrade', (res, socket, head) => {
      if (res.statusCode !== 101) reject(new Error(`status ${res.statusCode}`));
      let text = head.toString();
      socket.on('data', (c: Buffer) => {
        text += c.toString();
        if (text.endsWith('ping')) {
          socket.end();
          resolve(text);
        }
      });
      socket.write('ping');
    });
    req.on('response', (res) => reject(new Error(`no protocol switch: ${res.statusCode}`)));
    req.on('error', reject);
    req.setTimeout(20_000, () => req.destroy(new Error('no tunnel')));
    req.end();
  });
}
