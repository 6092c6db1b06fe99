import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client } from 'undici';
import type { FakeBehavior } from './fake/index.ts';
import type { Endpoint, InstanceSpec, LogLine, Runtime, RuntimeInstance } from './types.ts';

export interface RuntimeHarness {
  runtime: Runtime;
  cleanup(): Promise<void>;
  /** Where the suite writes code dirs (e.g. under the runtime's dataDir, like the agent's cache). Default: a temp dir. */
  codeRoot?: string;
}

export interface EndpointResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** One HTTP request to an instance's endpoint (unix socket or TCP). */
export async function requestEndpoint(
  endpoint: Endpoint,
  req: { method?: string; path?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<EndpointResponse> {
  const client =
    endpoint.kind === 'unix'
      ? new Client('http://localhost', { socketPath: endpoint.path })
      : new Client(`http://${endpoint.host.includes(':') ? `[${endpoint.host}]` : endpoint.host}:${endpoint.port}`);
  try {
    const res = await client.request({
      method: (req.method ?? 'GET') as 'GET',
      path: req.path ?? '/',
      headers: req.headers ?? {},
      ...(req.body !== undefined ? { body: req.body } : {}),
    });
    return { status: res.statusCode, headers: res.headers, body: await res.body.text() };
  } finally {
    await client.close();
  }
}

/** Printed by crash.js before it exits with code 3. */
export const CRASH_LINE = 'boom: missing config DATABASE_URL';

const HANDLER_JS = `const http = require('node:http');
const port = Number(process.env.PORT);
http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    console.log('req ' + req.method + ' ' + req.url);
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers, body: Buffer.concat(chunks).toString(), env: process.env }));
  });
}).listen(port, () => console.log('listening on ' + port));
`;
const CRASH_JS = `console.log('starting up');\nconsole.error(${JSON.stringify(CRASH_LINE)});\nprocess.exit(3);\n`;
const SILENT_JS = `console.log('thinking forever');\nsetInterval(() => {}, 1000);\n`;
const MAIN_PY = `import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        print('req GET ' + self.path)
        body = json.dumps({'method': 'GET', 'url': self.path, 'env': dict(os.environ)}).encode()
        self.send_response(200)
        self.send_header('content-type', 'application/json')
        self.send_header('content-length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

port = int(os.environ['PORT'])
srv = HTTPServer(('127.0.0.1', port), H)
print('listening on %d' % port)
srv.serve_forever()
`;

/**
 * What the fake driver must do to stand in for the programs this suite writes: crash.js fails
 * with CRASH_LINE, silent.js never listens, everything else serves the default echo.
 */
export function contractFakeBehavior(spec: InstanceSpec): FakeBehavior {
  const entry = spec.artifact.kind === 'code' ? spec.artifact.entrypoint : '';
  if (entry === 'crash.js') return { failStart: CRASH_LINE };
  if (entry === 'silent.js') return { startupDelayMs: Infinity };
  return {};
}

/** A function-shaped spec (node handler.js in /nonexistent, 128 MB) with `over` applied. */
export function contractSpec(over: Partial<InstanceSpec> = {}): InstanceSpec {
  return {
    instanceId: 'i1',
    owner: { kind: 'function', id: 'f1', name: 'fn' },
    artifact: { kind: 'code', dir: '/nonexistent', runtime: 'node', entrypoint: 'handler.js' },
    env: {},
    resources: { memoryMb: 128, vcpu: 1, pidsMax: 32 },
    listen: { port: 8080 },
    ...over,
  };
}

const OPTS = { timeout: 60_000 };
/** Generous: the suite must not depend on the machine's speed. */
const READY_MS = 20_000;

/**
 * The behaviour every Runtime driver must have. `make` is called once for the suite. With
 * skipPrograms, only the node echo function runs (for drivers that cannot run real programs).
 */
export function runtimeContract(name: string, make: () => Promise<RuntimeHarness>, opts: { skipPrograms?: boolean } = {}): void {
  describe(`Runtime contract: ${name}`, () => {
    let h: RuntimeHarness;
    let root: string;
    let ownRoot = false;
    let n = 0;
    const started: RuntimeInstance[] = [];

    before(async () => {
      h = await make();
      if (h.codeRoot) root = h.codeRoot;
      else {
        root = await mkdtemp(join(tmpdir(), 'aether-contract-'));
        ownRoot = true;
      }
      await mkdir(root, { recursive: true });
    });
    after(async () => {
      await Promise.all(started.map((i) => i.stop(0)));
      await h.cleanup();
      if (ownRoot) await rm(root, { recursive: true, force: true });
    });

    /** A code dir with one file, readable by any uid (sandboxes run as an unprivileged user). */
    async function code(file: string, text: string): Promise<string> {
      const dir = join(root, `fn-${process.pid}-${n++}`);
      await mkdir(dir, { recursive: true });
      await chmod(dir, 0o755);
      await writeFile(join(dir, file), text, { mode: 0o644 });
      return dir;
    }

    async function launch(file: string, text: string, over: Partial<InstanceSpec> = {}): Promise<{ inst: RuntimeInstance; logs: LogLine[] }> {
      const codeDir = await code(file, text);
      const id = `inst-${process.pid}-${n++}`;
      const spec = contractSpec({
        instanceId: id,
        owner: { kind: 'function', id: `fn-${id}`, name: 'contract-fn' },
        artifact: { kind: 'code', dir: codeDir, runtime: file.endsWith('.py') ? 'python' : 'node', entrypoint: file },
        env: { GREETING: 'hello world', QUOTED: `it's "quoted" $HOME` },
        resources: { memoryMb: 256, vcpu: 1, pidsMax: 64 },
        ...over,
      });
      const inst = await h.runtime.create(spec);
      const logs: LogLine[] = [];
      inst.onLog((l) => logs.push(l));
      started.push(inst);
      assert.equal(inst.inspect().state, 'created');
      await inst.start();
      return { inst, logs };
    }

    async function eventually(cond: () => boolean, what: string): Promise<void> {
      for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
      assert.ok(cond(), what);
    }

    it('runs a node function: ready, HTTP through the endpoint, env, logs, stop', OPTS, async () => {
      process.env['AETHER_CONTRACT_SECRET'] = 'must-not-leak';
      try {
        const { inst, logs } = await launch('handler.js', HANDLER_JS);
        await inst.waitReady(READY_MS);
        const st = inst.inspect();
        assert.equal(st.state, 'running');
        assert.equal(typeof st.pid, 'number');
        assert.equal(st.exit, undefined);

        const res = await requestEndpoint(inst.endpoint, { method: 'POST', path: '/hello?x=1', body: 'ping', headers: { 'x-test': 'yes' } });
        assert.equal(res.status, 200);
        const got = JSON.parse(res.body) as { method: string; url: string; body: string; headers: Record<string, string>; env: Record<string, string> };
        assert.equal(got.method, 'POST');
        assert.equal(got.url, '/hello?x=1');
        assert.equal(got.body, 'ping');
        assert.equal(got.headers['x-test'], 'yes');
        assert.match(got.env['PORT'] ?? '', /^\d+$/);
        if (inst.endpoint.kind === 'tcp') assert.equal(got.env['PORT'], String(inst.endpoint.port));
        assert.equal(got.env['AETHER_INSTANCE_ID'], inst.id);
        assert.equal(got.env['AETHER_FUNCTION_ID'], inst.spec.owner.id);
        assert.equal(got.env['AETHER_FUNCTION_NAME'], 'contract-fn');
        assert.equal(got.env['GREETING'], 'hello world');
        assert.equal(got.env['QUOTED'], `it's "quoted" $HOME`);
        assert.equal(got.env['AETHER_CONTRACT_SECRET'], undefined, 'the agent environment must not leak into instances');
        assert.equal(got.env['NODE_EXTRA_CA_CERTS'], undefined);

        await eventually(() => logs.some((l) => l.stream === 'stdout' && l.text === 'req POST /hello?x=1'), 'request log line');
        assert.ok(logs.some((l) => l.stream === 'stdout' && /^listening on \d+$/.test(l.text)), 'startup log line');
        assert.ok(logs.every((l) => typeof l.time === 'number' && l.time > 0));

        await inst.stop(2000);
        const exit = await inst.exited;
        assert.equal(inst.inspect().state, 'exited');
        assert.deepEqual(inst.inspect().exit, exit);
        await inst.stop(); // idempotent
      } finally {
        delete process.env['AETHER_CONTRACT_SECRET'];
      }
    });

    it('a program that exits at once makes waitReady reject with its last output', OPTS, async () => {
      const { inst } = await launch('crash.js', CRASH_JS);
      await assert.rejects(inst.waitReady(READY_MS), (err: Error) => {
        assert.ok(err.message.includes(CRASH_LINE), err.message);
        return true;
      });
      const exit = await inst.exited;
      assert.notEqual(exit.code, 0);
      assert.equal(inst.inspect().state, 'exited');
      // waiting again fails the same way, at once
      await assert.rejects(inst.waitReady(READY_MS), /missing config/);
    });

    it('a program that never listens makes waitReady reject after the timeout; stop still works', OPTS, async () => {
      const { inst } = await launch('silent.js', SILENT_JS);
      await assert.rejects(inst.waitReady(400), /did not listen/);
      assert.notEqual(inst.inspect().state, 'exited');
      await inst.stop(1000);
      await inst.exited;
      assert.equal(inst.inspect().state, 'exited');
    });

    it('waitReady rejects when its signal aborts', OPTS, async () => {
      const { inst } = await launch('silent.js', SILENT_JS);
      const ac = new AbortController();
      const p = inst.waitReady(READY_MS, ac.signal);
      ac.abort(new Error('caller gave up'));
      await assert.rejects(p, /caller gave up/);
      await inst.stop(1000);
    });

    it('stop() of a created (never started) instance settles exited', OPTS, async () => {
      const codeDir = await code('handler.js', HANDLER_JS);
      const inst = await h.runtime.create(contractSpec({
        instanceId: `never-${process.pid}-${n++}`,
        artifact: { kind: 'code', dir: codeDir, runtime: 'node', entrypoint: 'handler.js' },
      }));
      await inst.stop();
      await inst.exited;
      assert.equal(inst.inspect().state, 'exited');
    });

    it('runs python main.py', { ...OPTS, skip: opts.skipPrograms ? 'driver cannot run programs' : false }, async () => {
      const { inst, logs } = await launch('main.py', MAIN_PY);
      await inst.waitReady(READY_MS);
      const res = await requestEndpoint(inst.endpoint, { path: '/py' });
      assert.equal(res.status, 200);
      const got = JSON.parse(res.body) as { url: string; env: Record<string, string> };
      assert.equal(got.url, '/py');
      assert.equal(got.env['AETHER_INSTANCE_ID'], inst.id);
      assert.equal(got.env['GREETING'], 'hello world');
      await eventually(() => logs.some((l) => l.stream === 'stdout' && l.text === 'req GET /py'), 'python request log line');
      await inst.stop(2000);
      assert.equal(inst.inspect().state, 'exited');
    });
  });
}
