import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { AetherError, errorBody } from './errors.ts';
import { newId } from './ids.ts';
import type { Logger } from './log.ts';

export type RawHandler = (req: IncomingMessage, res: ServerResponse) => void | Promise<void>;

/**
 * Every raw request entry point goes through this: a throw or a rejection in one request answers
 * 500 AETHER_ERR_INTERNAL (logged with a request id, also sent as x-aether-request-id) and the
 * process goes on. Coded errors keep their own status.
 */
export function guardHandler(log: Logger, what: string, handler: RawHandler): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    try {
      const p = handler(req, res);
      if (p) p.catch((err: unknown) => answerUnexpected(log, what, req, res, err));
    } catch (err) {
      answerUnexpected(log, what, req, res, err);
    }
  };
}

/** The answer to an error nobody expected (a bug): logged in full, answered without details. */
export function answerUnexpected(log: Logger, what: string, req: IncomingMessage, res: ServerResponse, err: unknown): void {
  const requestId = newId('req');
  try {
    log.error({ err, request_id: requestId, method: req.method, url: clip(req.url ?? '', 200) }, `${what}: request failed unexpectedly`);
    if (res.headersSent || res.writableEnded || res.destroyed) {
      res.destroy();
      return;
    }
    const { status, body } = errorBody(err);
    closeAfterEarlyResponse(req, res);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'x-aether-request-id': requestId });
    res.end(body);
  } catch {
    res.destroy();
  }
}

/** Lingering close: how long and how much of an unread request body we still read and discard. */
export interface LingerLimits {
  ms: number;
  bytes: number;
}

export const DEFAULT_LINGER: LingerLimits = { ms: 5000, bytes: 4 * 1024 * 1024 };

const lingering = new WeakSet<Socket>();

/**
 * Call before answering a request whose body was not (fully) read, e.g. an early 404 or 413.
 * Without it, Node either drains the whole body to keep the connection (any size: a client could
 * make us read gigabytes) or, with `Connection: close`, closes the socket while the client is
 * still sending: the kernel then resets the connection and the client may never read our answer.
 * As nginx's lingering close does, we answer with `Connection: close`, shut our sending side once
 * the answer is out, read and discard what still arrives for a bounded time and amount, then close.
 */
export function closeAfterEarlyResponse(req: IncomingMessage, res: ServerResponse, limits: LingerLimits = DEFAULT_LINGER): void {
  if (req.complete || res.headersSent) return;
  res.setHeader('connection', 'close');
  lingerOnClose(req, req.socket, limits);
}

function lingerOnClose(req: IncomingMessage, socket: Socket | null, limits: LingerLimits): void {
  if (!socket || lingering.has(socket)) return;
  lingering.add(socket);
  // node's server calls destroySoon() once a `Connection: close` answer is written; it has already
  // resumed (dumped) the request body by then.
  socket.destroySoon = function lingeringClose(this: Socket): void {
    let seen = 0;
    const stop = (): void => {
      clearTimeout(timer);
      socket.destroy();
    };
    // A plain (unref'd) timer: lingering is a socket detail, not platform logic on the clock.
    const timer = setTimeout(stop, limits.ms);
    timer.unref();
    req.on('data', (b: Buffer) => {
      seen += b.length;
      if (seen > limits.bytes) stop();
    });
    req.once('end', stop); // all of it arrived: nothing unread left to provoke a reset
    socket.once('end', stop);
    socket.once('close', () => clearTimeout(timer));
    if (socket.writable) socket.end(); // our answer, then FIN; reading goes on
  };
}

/** At most `n` characters of something a client sent, for messages and logs. */
export function clip(s: string, n = 100): string {
  return s.length <= n ? s : `${s.slice(0, n)}…`;
}

/** decodeURIComponent that reports a malformed escape as a 400 instead of throwing a URIError. */
export function decodePathPart(s: string, what = 'path'): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw new AetherError('AETHER_ERR_VALIDATION', `${what}: malformed percent-escape`);
  }
}

/** Log unhandled promise rejections instead of ending the process (each cause is still a bug to fix). */
export function installRejectionSafetyNet(log: Logger, proc: Pick<NodeJS.EventEmitter, 'on' | 'off'> = process): () => void {
  const onRejection = (reason: unknown): void => {
    log.error({ err: reason }, 'unhandled promise rejection (a bug); the process goes on');
  };
  proc.on('unhandledRejection', onRejection);
  return () => proc.off('unhandledRejection', onRejection);
}

/**
 * For a server's 'clientError' event (a request node's parser refused: unknown method, bad
 * syntax, oversized headers, header timeout): our JSON error shape instead of a bare 400.
 */
export function clientErrorHandler(err: Error & { code?: string }, socket: Duplex): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  let e: AetherError;
  if (err.code === 'HPE_INVALID_METHOD') e = new AetherError('AETHER_ERR_METHOD_NOT_ALLOWED', 'unknown HTTP method');
  else if (err.code === 'HPE_HEADER_OVERFLOW') e = new AetherError('AETHER_ERR_HEADERS_TOO_LARGE');
  else if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') e = new AetherError('AETHER_ERR_REQUEST_TIMEOUT');
  else e = new AetherError('AETHER_ERR_VALIDATION', 'malformed HTTP request');
  answerOnSocket(socket, e);
}

/** For a server's 'connect' event: we are not a forward proxy (node would just drop the socket). */
export function refuseConnect(_req: IncomingMessage, socket: Duplex): void {
  socket.on('error', () => undefined);
  answerOnSocket(socket, new AetherError('AETHER_ERR_METHOD_NOT_ALLOWED', 'CONNECT is not supported'));
}

/** A complete error answer written straight to a socket that has no ServerResponse, then a short linger. */
export function answerOnSocket(socket: Duplex, e: AetherError): void {
  const body = JSON.stringify(e.toJSON());
  if (socket.writable) {
    socket.end(`HTTP/1.1 ${e.status} ${STATUS_CODES[e.status] ?? ''}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  }
  // Closing at once would reset a client still sending before it reads the answer: a short linger.
  const t = setTimeout(() => socket.destroy(), 1000);
  t.unref();
  socket.once('close', () => clearTimeout(t));
  socket.once('end', () => socket.destroy());
  socket.resume();
}
