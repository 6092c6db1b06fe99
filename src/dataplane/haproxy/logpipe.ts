import { spawnSync } from 'node:child_process';
import { closeSync, constants, openSync, readSync, rmSync } from 'node:fs';
import { StringDecoder } from 'node:string_decoder';
import type { Clock, TimerHandle } from '../../core/index.ts';

/**
 * HAProxy's per-request log lines, read in batches. HAProxy writes one line per request to its
 * stdout; a stream reader wakes the platform for every line (at one connection: once per request,
 * ~60 µs of platform CPU each, competing with the request path for the cores). Instead stdout is
 * a FIFO whose buffer is raised to 1 MiB, and the platform reads it every `pollMs` (backing off to
 * `idlePollMs` while it stays empty): one wakeup takes all lines written meanwhile.
 */
export const LOG_POLL_MS = 20;
/**
 * While nothing comes, the interval doubles up to this: an idle platform woke 50 times a second for
 * an empty pipe, and each empty read is an EAGAIN error (several % of a core idle, measured). The
 * first line after a quiet spell waits at most this long; 1 MiB of pipe holds ~13,000 lines, so no
 * rate below ~50,000 requests/s loses lines before the reader is back at LOG_POLL_MS.
 */
export const LOG_IDLE_POLL_MS = 250;
/** Linux F_SETPIPE_SZ; 1 MiB holds ~13,000 lines: 20 ms of reading covers ~650,000 requests/s. */
const F_SETPIPE_SZ = 1031;
const PIPE_BYTES = 1 << 20;

export interface LogPipe {
  /** For the child's stdout (`stdio[1]`). Close it in the parent once the child has it. */
  writeFd: number;
  /** The command prefix that raises the pipe's buffer before exec'ing the real command. */
  wrap(argv: string[]): string[];
  /** Start reading: `onLine` for every complete line, until the writer closes or `close()`. */
  start(onLine: (line: string) => void): void;
  /** Read what is left (the lines of requests that ended since the last poll), then stop. */
  close(): void;
}

export function openLogPipe(path: string, clock: Clock, pollMs = LOG_POLL_MS, idlePollMs = LOG_IDLE_POLL_MS): LogPipe {
  rmSync(path, { force: true });
  const made = spawnSync('mkfifo', ['-m', '600', path], { encoding: 'utf8' });
  if (made.status !== 0) throw new Error(`mkfifo ${path}: ${made.error?.message ?? made.stderr.trim()}`);
  // Reader first (non-blocking, so it does not wait for a writer), then the writer end.
  const readFd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  const writeFd = openSync(path, constants.O_WRONLY | constants.O_NONBLOCK);
  rmSync(path, { force: true });
  const perl = spawnSync('perl', ['-e', '1'], { stdio: 'ignore' }).status === 0;
  let timer: TimerHandle | undefined;
  let closed = false;
  let onLine: (line: string) => void = () => undefined;
  const buf = Buffer.allocUnsafe(256 * 1024);
  const decoder = new StringDecoder('utf8');
  let partial = '';
  /** Empty polls in a row. */
  let empty = 0;
  /** Whether the last readAll found anything. */
  let got = false;
  /** Read everything there is; false once the writer is gone (EOF) or the pipe failed. */
  const readAll = (): boolean => {
    got = false;
    for (;;) {
      let n: number;
      // An empty pipe throws EAGAIN: no stack trace for it (capturing one was most of an idle poll's cost).
      const limit = Error.stackTraceLimit;
      Error.stackTraceLimit = 0;
      try {
        n = readSync(readFd, buf, 0, buf.length, null);
      } catch (err) {
        // Anything but "empty now": the pipe is unusable; stop (this HAProxy's later lines are lost).
        return (err as NodeJS.ErrnoException).code === 'EAGAIN';
      } finally {
        Error.stackTraceLimit = limit;
      }
      if (n === 0) return false; // EOF: every writer is gone (HAProxy exited); a new start opens a new pipe
      got = true;
      const chunk = partial + decoder.write(buf.subarray(0, n));
      let start = 0;
      for (let nl = chunk.indexOf('\n'); nl >= 0; nl = chunk.indexOf('\n', start)) {
        onLine(chunk.slice(start, nl));
        start = nl + 1;
      }
      partial = chunk.slice(start);
      if (partial.length > 65536) partial = ''; // never a log line of ours
      if (n < buf.length) return true;
    }
  };
  const stop = (): void => {
    closed = true;
    if (timer) clock.clearTimeout(timer);
    timer = undefined;
    closeSync(readFd);
  };
  const poll = (): void => {
    timer = undefined;
    if (closed) return;
    if (!readAll()) {
      stop();
      return;
    }
    empty = got ? 0 : empty + 1;
    timer = clock.setTimeout(poll, empty <= 1 ? pollMs : Math.min(idlePollMs, pollMs * 2 ** Math.min(20, empty - 1)));
  };
  return {
    writeFd,
    // Without perl the buffer stays at the kernel's 64 KiB (~850 lines per 20 ms: still ~40,000 requests/s).
    wrap: (argv) => (perl ? ['perl', '-e', `fcntl(STDOUT, ${F_SETPIPE_SZ}, ${PIPE_BYTES}); exec { $ARGV[0] } @ARGV or die "exec $ARGV[0]: $!"`, ...argv] : argv),
    start(handler) {
      onLine = handler;
      poll();
    },
    close() {
      if (closed) return;
      readAll(); // the lines of requests that ended since the last poll
      stop();
    },
  };
}
