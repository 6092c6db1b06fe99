/** Services as agents report them and the API shows them (the specs themselves live in src/deploy). */
/** What an agent reports about one service it runs (under its lease). */
export interface ServiceStatusRecord {
  node: string;
  service: string;
  instance_id: string | null;
  config_key: string;
  state: 'starting' | 'running' | 'unhealthy' | 'stopping' | 'exited';
  health: 'unknown' | 'healthy' | 'unhealthy' | 'not_configured';
  address: string | null;
  restarts: number;
  started_at: string | null;
  message: string | null;
}

export interface ServiceView {
  name: string;
  node: string | null;
  state: ServiceStatusRecord['state'] | 'pending' | 'assigned';
  health: ServiceStatusRecord['health'];
  host: string | null;
  image: string;
  vcpus: number;
  memory_mb: number;
  tenant: string | null;
  revision: string | null;
  restarts: number;
  address: string | null;
  message: string | null;
}
