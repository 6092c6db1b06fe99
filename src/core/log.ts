import { pino, type Logger } from 'pino';

export type { Logger };

/** Structured JSON logs on stderr; AETHER_LOG_LEVEL picks the level (default info). */
export function createLogger(name: string, level = process.env['AETHER_LOG_LEVEL'] ?? 'info'): Logger {
  return pino({ name, level, base: { component: name } }, pino.destination({ dest: 2, sync: false }));
}

/** A logger that drops everything (tests, benchmarks). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
