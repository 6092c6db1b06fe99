/**
 * Typed client for the Firecracker API (pinned spec: ./spec/firecracker-v1.16.1.yaml) over its unix
 * socket. Only what the driver uses. Bodies are sent exactly as typed here: Firecracker rejects
 * unknown fields, so no field newer than v1.16.1 appears. A refused call becomes AETHER_ERR_VMM
 * whose message carries Firecracker's `fault_message`.
 */
import { Client } from 'undici';
import { AetherError } from '../../core/index.ts';

export interface BootSource {
  kernel_image_path: string;
  initrd_path?: string;
  boot_args?: string;
}

export interface TokenBucket {
  size: number;
  refill_time: number;
  one_time_burst?: number;
}
export interface RateLimiter {
  bandwidth?: TokenBucket;
  ops?: TokenBucket;
}

export interface Drive {
  drive_id: string;
  is_root_device: boolean;
  is_read_only?: boolean;
  path_on_host?: string;
  partuuid?: string;
  cache_type?: 'Unsafe' | 'Writeback';
  io_engine?: 'Sync' | 'Async';
  rate_limiter?: RateLimiter;
}

export interface MachineConfiguration {
  vcpu_count: number;
  mem_size_mib: number;
  smt?: boolean;
  track_dirty_pages?: boolean;
  huge_pages?: 'None' | '2M';
}

export interface NetworkInterface {
  iface_id: string;
  host_dev_name: string;
  guest_mac?: string;
  mtu?: number;
  rx_rate_limiter?: RateLimiter;
  tx_rate_limiter?: RateLimiter;
}

export interface MmdsConfig {
  network_interfaces: string[];
  version?: 'V1' | 'V2';
  ipv4_address?: string;
  imds_compat?: boolean;
}

export interface Vsock {
  guest_cid: number;
  uds_path: string;
}

export interface Logger {
  log_path?: string;
  level?: 'Error' | 'Warning' | 'Info' | 'Debug' | 'Trace' | 'Off';
  show_level?: boolean;
  show_log_origin?: boolean;
  module?: string;
}

export interface Metrics {
  metrics_path: string;
}

export type ActionType = 'InstanceStart' | 'SendCtrlAltDel' | 'FlushMetrics';

export interface SnapshotCreateParams {
  snapshot_path: string;
  mem_file_path: string;
  snapshot_type?: 'Full' | 'Diff';
}

export interface SnapshotLoadParams {
  snapshot_path: string;
  mem_backend: { backend_type: 'File' | 'Uffd'; backend_path: string };
  resume_vm?: boolean;
  track_dirty_pages?: boolean;
  network_overrides?: { iface_id: string; host_dev_name: string }[];
  vsock_override?: { uds_path: string };
  clock_realtime?: boolean;
}

export interface InstanceInfo {
  app_name: string;
  id: string;
  state: 'Not started' | 'Running' | 'Paused';
  vmm_version: string;
}

export type JsonObject = { [k: string]: unknown };

/** Path ids: Firecracker accepts only alphanumerics and `_`. */
const ID_RE = /^[A-Za-z0-9_]+$/;

export interface FirecrackerClientOptions {
  /** Per-call timeout (ms); InstanceStart and snapshot calls get `slowTimeoutMs`. */
  timeoutMs?: number;
  slowTimeoutMs?: number;
}

export class FirecrackerClient {
  readonly socketPath: string;
  readonly #client: Client;
  readonly #timeoutMs: number;
  readonly #slowTimeoutMs: number;
  /** Firecracker handles one request at a time; we keep calls in order per VM. */
  #queue: Promise<unknown> = Promise.resolve();

  constructor(socketPath: string, opts: FirecrackerClientOptions = {}) {
    this.socketPath = socketPath;
    this.#timeoutMs = opts.timeoutMs ?? 2000;
    this.#slowTimeoutMs = opts.slowTimeoutMs ?? 30_000;
    this.#client = new Client('http://localhost', { socketPath, pipelining: 1 });
  }

  describe(): Promise<InstanceInfo> {
    return this.#call('GET', '/') as Promise<InstanceInfo>;
  }
  version(): Promise<{ firecracker_version: string }> {
    return this.#call('GET', '/version') as Promise<{ firecracker_version: string }>;
  }
  putLogger(body: Logger): Promise<void> {
    return this.#put('PUT', '/logger', body);
  }
  putMetrics(body: Metrics): Promise<void> {
    return this.#put('PUT', '/metrics', body);
  }
  putMachineConfig(body: MachineConfiguration): Promise<void> {
    return this.#put('PUT', '/machine-config', body);
  }
  getMachineConfig(): Promise<MachineConfiguration> {
    return this.#call('GET', '/machine-config') as Promise<MachineConfiguration>;
  }
  putBootSource(body: BootSource): Promise<void> {
    return this.#put('PUT', '/boot-source', body);
  }
  async putDrive(body: Drive): Promise<void> {
    return this.#put('PUT', `/drives/${id(body.drive_id)}`, body);
  }
  async putNetworkInterface(body: NetworkInterface): Promise<void> {
    return this.#put('PUT', `/network-interfaces/${id(body.iface_id)}`, body);
  }
  putVsock(body: Vsock): Promise<void> {
    return this.#put('PUT', '/vsock', body);
  }
  putMmdsConfig(body: MmdsConfig): Promise<void> {
    return this.#put('PUT', '/mmds/config', body);
  }
  putMmds(data: JsonObject): Promise<void> {
    return this.#put('PUT', '/mmds', data);
  }
  patchMmds(data: JsonObject): Promise<void> {
    return this.#put('PATCH', '/mmds', data);
  }
  getMmds(): Promise<JsonObject> {
    return this.#call('GET', '/mmds') as Promise<JsonObject>;
  }
  action(action_type: ActionType): Promise<void> {
    return this.#put('PUT', '/actions', { action_type }, action_type === 'InstanceStart');
  }
  pause(): Promise<void> {
    return this.#put('PATCH', '/vm', { state: 'Paused' });
  }
  resume(): Promise<void> {
    return this.#put('PATCH', '/vm', { state: 'Resumed' });
  }
  createSnapshot(body: SnapshotCreateParams): Promise<void> {
    return this.#put('PUT', '/snapshot/create', body, true);
  }
  loadSnapshot(body: SnapshotLoadParams): Promise<void> {
    return this.#put('PUT', '/snapshot/load', body, true);
  }

  close(): Promise<void> {
    return this.#client.close().catch(() => undefined);
  }

  async #put(method: 'PUT' | 'PATCH', path: string, body: object, slow = false): Promise<void> {
    await this.#call(method, path, body, slow);
  }

  #call(method: 'GET' | 'PUT' | 'PATCH', path: string, body?: object, slow = false): Promise<unknown> {
    const run = this.#queue.then(() => this.#send(method, path, body, slow));
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #send(method: 'GET' | 'PUT' | 'PATCH', path: string, body: object | undefined, slow: boolean): Promise<unknown> {
    const what = `${method} ${path}`;
    let status: number;
    let text: string;
    try {
      const res = await this.#client.request({
        method,
        path,
        headers: body === undefined ? { accept: 'application/json' } : { accept: 'application/json', 'content-type': 'application/json' },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        signal: AbortSignal.timeout(slow ? this.#slowTimeoutMs : this.#timeoutMs),
      });
      status = res.statusCode;
      text = await res.body.text();
    } catch (err) {
      throw new AetherError('AETHER_ERR_VMM', `Firecracker API ${what} failed: ${(err as Error).message}`, { cause: err });
    }
    if (status >= 200 && status < 300) return text === '' ? undefined : (JSON.parse(text) as unknown);
    throw new AetherError('AETHER_ERR_VMM', `Firecracker refused ${what} (${status}): ${faultMessage(text)}`);
  }
}

function id(v: string): string {
  if (!ID_RE.test(v)) throw new AetherError('AETHER_ERR_VMM', `Firecracker resource id ${JSON.stringify(v)} may hold only letters, digits and _`);
  return v;
}

/** Firecracker answers errors with {"fault_message": "..."}; anything else is shown as is. */
export function faultMessage(text: string): string {
  try {
    const j = JSON.parse(text) as { fault_message?: unknown };
    if (typeof j.fault_message === 'string') return j.fault_message;
  } catch {
    // not JSON
  }
  return text.slice(0, 500) || '(no body)';
}
