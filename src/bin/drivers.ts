import { chmodSync, closeSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { scheme, type Config } from '../config/index.ts';
import type { Logger } from '../core/index.ts';
import type { BlobStore } from '../blob/index.ts';
import type { Queue } from '../queue/index.ts';
import type { Store } from '../store/index.ts';
import { createSqliteStore } from '../store/sqlite.ts';
import { createEtcdStore } from '../store/etcd.ts';
import { createMemoryQueue } from '../queue/memory.ts';
import { createRedisQueue } from '../queue/redis.ts';
import { createFsBlobStore } from '../blob/fs.ts';
import { createS3BlobStore, s3OptionsFromUrl } from '../blob/s3.ts';

/** The only place that maps configuration URLs to concrete drivers. */
export function openStore(cfg: Config, logger: Logger): Store {
  if (scheme(cfg.store) === 'sqlite:') {
    const path = decodeURIComponent(new URL(cfg.store).pathname);
    mkdirSync(dirname(path), { recursive: true });
    // 0600 whatever the umask; SQLite gives its -wal/-shm files the database file's mode.
    closeSync(openSync(path, 'a', 0o600));
    chmodSync(path, 0o600);
    return createSqliteStore({ path });
  }
  return createEtcdStore({ endpoints: endpointsFromUrl(cfg.store), logger });
}

/** etcd://h1:2379,h2:2379 -> ['http://h1:2379', 'http://h2:2379'] (URL parsing would drop the list). */
export function endpointsFromUrl(href: string): string[] {
  return href
    .replace(/^etcd:\/\//, '')
    .replace(/\/.*$/, '')
    .split(',')
    .filter(Boolean)
    .map((h) => `http://${h}`);
}

export function openQueue(cfg: Config, logger: Logger): Queue {
  if (scheme(cfg.queue) === 'memory:') return createMemoryQueue();
  return createRedisQueue({ url: cfg.queue, logger });
}

export function openBlob(cfg: Config): BlobStore {
  if (scheme(cfg.blob) === 'file:') {
    const dir = fileURLToPath(cfg.blob);
    mkdirSync(dir, { recursive: true });
    return createFsBlobStore({ dir });
  }
  return createS3BlobStore(s3OptionsFromUrl(cfg.blob));
}
