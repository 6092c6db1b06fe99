/**
 * Health check bookkeeping (firework B9, plus backoff): the first check runs one interval after
 * start (boot grace); `retries` consecutive failures restart the instance; restarts back off
 * exponentially so a service that never becomes healthy does not spin.
 */
export type Health = 'unknown' | 'healthy' | 'unhealthy';

export interface HealthState {
  health: Health;
  failures: number;
  restarts: number;
  /** Earliest time (clock ms) the next restart may happen. */
  next_restart_at: number;
}

export interface HealthPolicy {
  retries: number;
  backoff_base_ms: number;
  backoff_max_ms: number;
}

export const initialHealth = (): HealthState => ({ health: 'unknown', failures: 0, restarts: 0, next_restart_at: 0 });

export function restartBackoff(p: HealthPolicy, restarts: number): number {
  return Math.min(p.backoff_max_ms, p.backoff_base_ms * 2 ** Math.max(0, restarts - 1));
}

/** One check result in, the new state and whether to restart now out. */
export function observeHealth(s: HealthState, ok: boolean, now: number, p: HealthPolicy): { state: HealthState; restart: boolean } {
  if (ok) return { state: { ...s, health: 'healthy', failures: 0 }, restart: false };
  const failures = s.failures + 1;
  if (failures >= p.retries && now >= s.next_restart_at) {
    const restarts = s.restarts + 1;
    return { state: { health: 'unknown', failures: 0, restarts, next_restart_at: now + restartBackoff(p, restarts) }, restart: true };
  }
  return { state: { ...s, health: 'unhealthy', failures }, restart: false };
}

/** firework's metric encoding: 1 healthy, 0 unhealthy, -1 unknown. */
export const healthGauge = (h: Health): number => (h === 'healthy' ? 1 : h === 'unhealthy' ? 0 : -1);
