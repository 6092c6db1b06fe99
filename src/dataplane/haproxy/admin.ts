import { connect } from 'node:net';

/** Runtime API of HAProxy over its private admin socket: one command per connection. */
export function adminCommand(socketPath: string, command: string, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(socketPath);
    let out = '';
    const timer = setTimeout(() => s.destroy(new Error(`haproxy admin: "${command}" timed out`)), timeoutMs);
    s.setEncoding('utf8');
    s.on('data', (d: string) => (out += d));
    s.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    s.once('close', () => {
      clearTimeout(timer);
      resolve(out);
    });
    s.end(command + '\n');
  });
}

/** Answers of commands that worked ("" or a known success line); anything else is an error. */
export function commandFailed(command: string, answer: string): boolean {
  if (command.startsWith('show ')) return false;
  // Several commands (";"-separated) answer one block each.
  return answer
    .split('\n')
    .map((l) => l.trim())
    // `set server ... addr` reports what it changed (or that nothing needed to).
    .some((l) => l !== '' && !/^(New server registered|Server deleted)/.test(l) && !/ by 'stats socket command'$/.test(l));
}
