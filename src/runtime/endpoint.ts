import net from 'node:net';
import type { Socket } from 'node:net';

/** The byte a sandbox forwarder sends first on a connection once it has reached the program. */
export const PREAMBLE_OK = 0x01;

type ConnectCallback = (...args: [null, Socket] | [Error, null]) => void;

/**
 * An undici `connect` function for a forwarder socket (an Endpoint with `preamble`): it hands
 * undici the connection only after the forwarder's PREAMBLE_OK byte. A connection closed (or
 * failing) before that byte fails with code ECONNREFUSED: a connect failure, so nothing of the
 * request was sent and it may go to another instance. The signal cannot be forged by the program:
 * the forwarder sends it before relaying any byte of the program.
 */
export function preambleConnector(path: string, timeoutMs = 5000): (opts: unknown, cb: ConnectCallback) => void {
  return (_opts, cb) => {
    const s = net.connect(path);
    let done = false;
    const finish = (err: Error | undefined): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.off('readable', onReadable);
      s.off('end', onEnd);
      s.off('close', onEnd);
      s.off('error', onError);
      if (!err) return cb(null, s);
      s.destroy();
      cb(err, null);
    };
    const refused = (why: string): Error => Object.assign(new Error(`the program is not reachable: ${why}`), { code: 'ECONNREFUSED' });
    const onEnd = (): void => finish(refused('the forwarder closed the connection'));
    const onError = (err: Error): void => finish(refused(err.message));
    const onReadable = (): void => {
      const b = s.read(1) as Buffer | null;
      if (b === null) return; // not yet (or the end, which onEnd handles)
      if (b[0] !== PREAMBLE_OK) finish(refused(`unexpected preamble ${b[0]}`));
      else finish(undefined);
    };
    const timer = setTimeout(() => finish(Object.assign(new Error('forwarder did not answer'), { code: 'UND_ERR_CONNECT_TIMEOUT' })), timeoutMs);
    s.on('readable', onReadable);
    s.on('end', onEnd);
    s.on('close', onEnd);
    s.on('error', onError);
  };
}
