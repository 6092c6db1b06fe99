import net from 'node:net';
import type { Socket } from 'node:net';

/** The byte a sandbox forwarder sends first on a connection: the program answered (or closed after reading). */
export const PREAMBLE_OK = 0x01;

type ConnectCallback = (...args: [null, Socket] | [Error, null]) => void;

/** Code of the error a forwarder connection fails with when its request reached no program. */
export const UNREACHED_SOCKET_CODE = 'ECONNREFUSED';

/**
 * An undici `connect` function for a forwarder socket (an Endpoint with `preamble`). The forwarder
 * sends PREAMBLE_OK right before the program's first byte (see forwarder.mjs); this strips it, and
 * when the connection ends or fails before it, fails with code ECONNREFUSED: undici reports that
 * as a connect-class error, so the request goes elsewhere. The program cannot forge the byte: the
 * forwarder sends it before anything of the program. Later requests on a kept-alive connection
 * have no such byte (see the proxy for what it can still tell about those).
 */
export function preambleConnector(path: string, timeoutMs = 5000): (opts: unknown, cb: ConnectCallback) => void {
  return (_opts, cb) => {
    const s = net.connect(path);
    let waiting = true;
    const unreached = (why: string): Error => Object.assign(new Error(`the request reached no program: ${why}`), { code: UNREACHED_SOCKET_CODE });
    // net.Socket hands every chunk read (and the end, as null) to push(): strip the status byte
    // there, before undici's parser sees anything
    const push = s.push.bind(s);
    const destroy = s.destroy.bind(s);
    s.push = (chunk: unknown, encoding?: BufferEncoding): boolean => {
      if (!waiting) return push(chunk, encoding);
      if (chunk === null) {
        destroy(unreached('the forwarder closed the connection'));
        return false;
      }
      const b = chunk as Buffer;
      if (b.length === 0) return true;
      waiting = false;
      if (b[0] !== PREAMBLE_OK) {
        s.destroy(new Error(`forwarder protocol: unexpected first byte ${b[0]}`));
        return false;
      }
      return b.length > 1 ? push(b.subarray(1), encoding) : true;
    };
    s.destroy = (err?: Error): Socket => destroy(waiting && err ? unreached(err.message) : err);
    let connected = false;
    const timer = setTimeout(() => {
      if (!connected) s.destroy(Object.assign(new Error('forwarder did not accept'), { code: 'UND_ERR_CONNECT_TIMEOUT' }));
    }, timeoutMs);
    s.once('connect', () => {
      connected = true;
      clearTimeout(timer);
      s.off('error', onConnectError);
      cb(null, s);
    });
    const onConnectError = (err: Error): void => {
      clearTimeout(timer);
      cb(Object.assign(new Error(`cannot connect to the forwarder: ${err.message}`), { code: UNREACHED_SOCKET_CODE }), null);
    };
    s.once('error', onConnectError);
  };
}
