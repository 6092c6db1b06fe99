import { cephAvailable, startRadosgw, type Radosgw } from './ceph.ts';
import { etcdAvailable, startEtcd, type EtcdServer } from './etcd.ts';
import { redisAvailable, startRedis, type RedisServer } from './redis.ts';

/** Why the distributed-mode backends (etcd, Redis, Ceph radosgw) cannot run here, or undefined when they can. */
export function backendsMissing(): string | undefined {
  return !etcdAvailable() ? 'etcd binary not found (apt-get install etcd-server)' : (redisAvailable() ?? cephAvailable());
}

/** Real etcd, Redis and radosgw, and how to point aether at them. */
export interface Backends {
  /** Kept apart so tests can break one (stop etcd, kill Redis, take S3 down). */
  etcd: EtcdServer;
  redis: RedisServer;
  rgw: Radosgw;
  /** The `--store` value (etcd). */
  store: string;
  /** --store, --queue and --blob for a gateway or an agent. */
  flags: string[];
  /** radosgw's credentials, for the S3 blob store. */
  env: Record<string, string>;
  /** Stop all three (and remove etcd's data dir); never rejects. */
  stop(): Promise<void>;
}

/**
 * Start the three at once. If one fails, the others are stopped before its error is thrown: a
 * failed start leaves no daemon behind.
 */
export async function startBackends(redisOpts: { appendOnly?: boolean } = {}): Promise<Backends> {
  const [e, r, g] = await Promise.allSettled([startEtcd(), startRedis(redisOpts), startRadosgw()]);
  const stop = async (): Promise<void> => {
    await Promise.allSettled([e.status === 'fulfilled' && e.value.cleanup(), r.status === 'fulfilled' && r.value.stop(), g.status === 'fulfilled' && g.value.stop()]);
  };
  if (e.status === 'rejected' || r.status === 'rejected' || g.status === 'rejected') {
    await stop();
    throw [e, r, g].find((s): s is PromiseRejectedResult => s.status === 'rejected')?.reason;
  }
  const [etcd, redis, rgw] = [e.value, r.value, g.value];
  const store = `etcd://${etcd.endpoints[0]?.replace('http://', '')}`;
  return {
    etcd,
    redis,
    rgw,
    store,
    flags: ['--store', store, '--queue', redis.url, '--blob', `s3://aether-code?endpoint=${rgw.endpoint}&region=us-east-1`],
    env: { AWS_ACCESS_KEY_ID: rgw.accessKeyId, AWS_SECRET_ACCESS_KEY: rgw.secretAccessKey },
    stop,
  };
}
