import type { CliIo } from './index.ts';

/** What a CLI run printed and the exit code it set (tests). */
export interface CliRun {
  out: string;
  err: string;
  code: number;
}

/** A CliIo that captures everything into `run` (tests run the CLI in-process). */
export function capturingIo(run: CliRun): CliIo {
  return {
    out: (c) => {
      run.out += typeof c === 'string' ? c : Buffer.from(c).toString();
    },
    err: (t) => {
      run.err += t;
    },
    setExitCode: (c) => {
      run.code = c;
    },
  };
}
