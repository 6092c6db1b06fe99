/**
 * A spec-checking fake Firecracker, for tests (no KVM needed). Run as a process:
 *
 *   node fake-vmm.ts --api-sock <path> [--id <id>] [--spec <yaml>] [--record <file.ndjson>]
 *                    [--guest-http <path>] [--ignore-ctrl-alt-del] [--run-programs]
 *                    [--halt-on-poweroff] [--no-ready-line]
 *                    [--log-path <file>] [--level <level>] [--show-level] [--metrics-path <file>]
 *
 * It serves the API socket the way Firecracker v1.16.1 does and refuses (400 + fault_message) every
 * request the pinned OpenAPI document does not allow: unknown path or method, a body that fails the
 * spec's schema (missing required field, wrong type, unknown field — Firecracker deserialises with
 * "deny unknown fields", so objects without an explicit `additionalProperties` are closed), a path id
 * that is not [A-Za-z0-9_]+ or differs from the body's, a pre-boot call after boot (or the reverse),
 * InstanceStart without a boot source, snapshot load after boot resources, snapshot create while not
 * paused. It is deliberately independent of the driver: it validates from the YAML, not from the
 * client's types.
 *
 * It also plays the guest enough for a driver: after InstanceStart (or a snapshot load + resume) a
 * simulated aether-init reads `aether.token` from boot_args, prints `AETHER-INIT READY`, waits for MMDS v2 data at
 * /aether/config, checks the token (a mismatch prints `AETHER-INIT: config rejected` and "powers
 * off": the process exits when boot_args carry `aether.vmm=firecracker`, else the guest halts and the
 * process stays, as a real x86 Firecracker does), then "runs the program": an HTTP server on --guest-http (a unix socket
 * path, relative to the API socket's directory unless absolute) answering with what the guest saw
 * (`/__say/<text>` prints the text on the console, `/__vmm-warn/<text>` makes the VMM log a warning,
 * as a misbehaving guest can, `/__exit` ends the program).
 * Ctrl+Alt+Del makes the guest reboot, which ends Firecracker (reboot=k), as on x86.
 * Its logger and metrics files are written as Firecracker writes them: opened once read+write,
 * non-blocking, created if missing, neither appending nor truncating, so each write lands at the
 * process's own file offset whatever happened to the file meanwhile (a truncation leaves a hole, not
 * a fresh file); a metrics line at boot, every 60 s after, on FlushMetrics and at exit.
 * Its logger behaves as v1.16.1's (firecracker/src/main.rs, vmm/src/logger/logging.rs): configured
 * at launch by --log-path/--level/--show-level, else it logs at Info to stdout, i.e. onto the serial
 * console ("Running Firecracker v…", "Listening on API socket", one line per API request); each
 * `PUT /logger` (before boot, any number of times) reconfigures it, its level back to Info unless
 * given. Metrics are configured once: by --metrics-path or by one `PUT /metrics`.
 * --record appends one JSON line per request: {method, path, body, status, fault}.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import net from 'node:net';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { accessSync, appendFileSync, constants, openSync, closeSync, ftruncateSync, mkdirSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { constants as osConstants, tmpdir } from 'node:os';
import { dirname, isAbsolute, join } from 'node:path';
import { parseArgs } from 'node:util';
import { Ajv, type ValidateFunction } from 'ajv';
import { parse as parseYaml } from 'yaml';
import { freePort } from '../../core/index.ts';

export const DEFAULT_SPEC = new URL('./spec/firecracker-v1.16.1.yaml', import.meta.url).pathname;

type Schema = Record<string, unknown>;
interface Operation {
  method: string;
  template: string;
  re: RegExp;
  params: string[];
  operationId: string;
  body?: { required: boolean; validate: ValidateFunction };
}

/** Close every object schema that does not say otherwise (Firecracker's deny_unknown_fields). */
function closeObjects(s: unknown): unknown {
  if (Array.isArray(s)) return s.map(closeObjects);
  if (s === null || typeof s !== 'object') return s;
  const out: Schema = {};
  for (const [k, v] of Object.entries(s)) out[k] = k === 'properties' ? Object.fromEntries(Object.entries(v as Schema).map(([p, ps]) => [p, closeObjects(ps)])) : closeObjects(v);
  if (out.properties !== undefined && out.additionalProperties === undefined) out.additionalProperties = false;
  return out;
}

/** Operations of the pinned spec with a body validator each (PATCH of a PUT's schema drops `required`). */
export function loadSpec(path: string = DEFAULT_SPEC): { version: string; operations: Operation[] } {
  const doc = parseYaml(readFileSync(path, 'utf8')) as { info: { version: string }; paths: Record<string, Record<string, Schema>>; definitions: Record<string, Schema> };
  const ajv = new Ajv({ strict: false, allErrors: false });
  // Swagger's own formats are type hints; MmdsConfig.ipv4_address puts a regex in `format`.
  for (const f of ['int32', 'int64']) ajv.addFormat(f, { type: 'number', validate: (n: number) => Number.isInteger(n) });
  const defs = closeObjects(doc.definitions) as Record<string, Schema>;
  for (const d of Object.values(defs)) {
    const props = (d.properties ?? {}) as Record<string, Schema>;
    for (const p of Object.values(props)) if (typeof p.format === 'string' && !['int32', 'int64'].includes(p.format)) ajv.addFormat(p.format, new RegExp(`^${p.format}$`));
  }
  ajv.addSchema({ $id: 'fc', definitions: defs });
  const operations: Operation[] = [];
  for (const [template, methods] of Object.entries(doc.paths)) {
    const params: string[] = [];
    const re = new RegExp(`^${template.replace(/\{(\w+)\}/g, (_m, p: string) => (params.push(p), '([^/]+)'))}$`);
    for (const [method, op] of Object.entries(methods)) {
      const bodyParam = ((op.parameters ?? []) as Schema[]).find((p) => p.in === 'body');
      let body: Operation['body'];
      if (bodyParam) {
        let schema = bodyParam.schema as Schema;
        const ref = schema.$ref as string | undefined;
        const putRef = ((methods.put?.parameters ?? []) as Schema[]).find((p) => p.in === 'body')?.schema as Schema | undefined;
        if (method === 'patch' && ref && putRef?.$ref === ref) {
          // a PATCH that reuses the PUT's definition is partial: same fields, none required
          const def = { ...(defs[ref.replace('#/definitions/', '')] as Schema) };
          delete def.required;
          schema = { $id: `fc-patch-${template}`, definitions: defs, ...def };
        } else schema = ref ? { $ref: `fc${ref}` } : (closeObjects(schema) as Schema);
        body = { required: bodyParam.required === true, validate: ajv.compile(schema) };
      }
      operations.push({ method: method.toUpperCase(), template, re, params, operationId: op.operationId as string, ...(body ? { body } : {}) });
    }
  }
  return { version: doc.info.version, operations };
}

/** When each implemented operation is accepted (from Firecracker's rpc_interface). */
const PHASE: Record<string, 'pre' | 'post' | 'both'> = {
  describeInstance: 'both', getFirecrackerVersion: 'both', getExportVmConfig: 'both', getMachineConfiguration: 'both',
  putMmds: 'both', patchMmds: 'both', getMmds: 'both',
  putLogger: 'pre', putMetrics: 'pre', putMachineConfiguration: 'pre', patchMachineConfiguration: 'pre', putGuestBootSource: 'pre',
  putGuestDriveByID: 'pre', putGuestNetworkInterfaceByID: 'pre', putGuestVsock: 'pre', putMmdsConfig: 'pre', putEntropyDevice: 'pre',
  loadSnapshot: 'pre',
  patchGuestDriveByID: 'post', patchGuestNetworkInterfaceByID: 'post', patchVm: 'post', createSnapshot: 'post',
};
const PATH_ID: Record<string, string> = { drive_id: 'drive_id', iface_id: 'iface_id', id: 'id' };
const MMDS_LIMIT = 51_200;

class Refused extends Error {
  status: number;
  constructor(message: string, status = 400) {
    super(message);
    this.status = status;
  }
}

type Obj = Record<string, unknown>;
interface VmConfig {
  machine: Obj;
  bootSource?: Obj;
  drives: Record<string, Obj>;
  ifaces: Record<string, Obj>;
  vsock?: Obj;
  mmdsConfig?: Obj;
}

/** log::LevelFilter, most severe first; what the logger lets through is at or before its level. */
const LEVELS = ['off', 'error', 'warn', 'info', 'debug', 'trace'] as const;
type Level = (typeof LEVELS)[number];
/** Firecracker's LevelFilter::from_str: case-insensitive, `warning` for `warn`. */
function parseLevel(s: string): Level | undefined {
  const l = s.toLowerCase() === 'warning' ? 'warn' : s.toLowerCase();
  return (LEVELS as readonly string[]).includes(l) ? (l as Level) : undefined;
}

/** Firecracker's own start-up failure: its message, and the exit code it ends with (main.rs FcExitCode). */
export class FakeVmmStartError extends Error {
  readonly exitCode: number;
  constructor(message: string, exitCode: number) {
    super(message);
    this.exitCode = exitCode;
  }
}

export interface FakeVmmOptions {
  apiSock: string;
  id?: string;
  spec?: string;
  record?: string;
  guestHttp?: string;
  ignoreCtrlAltDel?: boolean;
  /**
   * Run the config's program for real (on this host: the code drive /dev/vdb is unpacked with
   * debugfs, `node` is this Node, PORT is a free loopback port since the fake has no guest network)
   * and publish it on guestHttp once it accepts; without it a built-in echo server stands in.
   */
  runPrograms?: boolean;
  /** The guest halts instead of rebooting when its program ends: Firecracker keeps running. */
  haltOnPowerOff?: boolean;
  /** The guest never prints `AETHER-INIT READY` (an aether-init that does not announce itself). */
  noReadyLine?: boolean;
  /** Called when the fake "exits" (tests running it in-process); default: process.exit. */
  exit?: (code: number) => void;
  /** Serial console (the guest's ttyS0, Firecracker's stdout: also where its logger writes without a file); default process.stdout. */
  serial?: (line: string) => void;
  /** `--log-path`: the logger's file from launch on (no `PUT /logger` needed). */
  logPath?: string;
  /** `--level` (Error, Warning, Info, Debug, Trace, Off; default Info). */
  level?: string;
  /** `--show-level`: `:LEVEL` after the thread name. */
  showLevel?: boolean;
  /** `--metrics-path`: the metrics file from launch on (a `PUT /metrics` is then refused). */
  metricsPath?: string;
}

/** Serve a fake Firecracker on opts.apiSock; resolves once listening. */
export async function startFakeVmm(opts: FakeVmmOptions): Promise<{ close(): Promise<void> }> {
  const spec = loadSpec(opts.spec);
  const exit = opts.exit ?? ((code: number) => process.exit(code));
  const serial = opts.serial ?? ((line: string) => void process.stdout.write(`${line}\n`));
  const cfg: VmConfig = { machine: { vcpu_count: 1, mem_size_mib: 128, smt: false, track_dirty_pages: false }, drives: {}, ifaces: {} };
  let state: 'Not started' | 'Running' | 'Paused' = 'Not started';
  let bootResources = false;
  let mmds: Obj = {};
  let mmdsTouched = false;
  const closers: (() => void)[] = [];
  let ended = false;

  // --- logger and metrics (src/vmm/src/utils/mod.rs open_file_nonblock; logger/logging.rs; logger/metrics.rs) ---
  const outputs: { logger?: number; metrics?: number } = {};
  const missed = { logger: 0, metrics: 0 };
  /** Its defaults until configured: Info, no level shown, to stdout. */
  const logger: { level: Level; showLevel: boolean } = { level: 'info', showLevel: false };
  let metricsTimer: NodeJS.Timeout | undefined;
  /** O_RDWR | O_CREAT | O_NONBLOCK, no O_APPEND, no O_TRUNC: a FIFO nobody reads does not block it. */
  function openOutput(path: string): number {
    return openSync(path, constants.O_RDWR | constants.O_CREAT | constants.O_NONBLOCK, 0o640);
  }
  /** At the fd's own offset; a write that fails (a full FIFO) is dropped and counted, as Firecracker does. */
  function emit(to: 'logger' | 'metrics', text: string): void {
    const fd = outputs[to];
    if (fd === undefined) return;
    try {
      writeSync(fd, text);
    } catch {
      missed[to]++;
    }
  }
  /** `{time} [{id}:{thread}[:{LEVEL}]] {message}` (show_log_origin off) to its file, or to stdout while it has none. */
  function log(level: Exclude<Level, 'off'>, thread: string, message: string): void {
    if (LEVELS.indexOf(level) > LEVELS.indexOf(logger.level)) return;
    const line = `${new Date().toISOString()} [${opts.id ?? 'anonymous-instance'}:${thread}${logger.showLevel ? `:${level.toUpperCase()}` : ''}] ${message}`;
    if (outputs.logger !== undefined) emit('logger', `${line}\n`);
    else serial(line);
  }
  const logWarn = (message: string): void => log('warn', 'fc_vmm', message);
  /** LOGGER.update: a new file replaces the old one, the level is reset unless given, show_level kept unless given. */
  function configureLogger(c: { log_path?: unknown; level?: unknown; show_level?: unknown }): void {
    if (c.log_path !== undefined) {
      const fd = openOutput(String(c.log_path));
      if (outputs.logger !== undefined) closeSync(outputs.logger);
      outputs.logger = fd;
    }
    logger.level = (c.level !== undefined ? parseLevel(String(c.level)) : undefined) ?? 'info';
    if (typeof c.show_level === 'boolean') logger.showLevel = c.show_level;
  }
  /** init_metrics: opens (creates) the file, then METRICS.init, which succeeds once per process. */
  function configureMetrics(path: string): void {
    const fd = openOutput(path);
    if (outputs.metrics !== undefined) {
      closeSync(fd);
      throw new Error('Reinitialization of metrics not allowed.');
    }
    outputs.metrics = fd;
  }
  function flushMetrics(): void {
    emit('metrics', `${JSON.stringify({ utc_timestamp_ms: Date.now(), api_server: { process_startup_time_us: 1 }, logger: { missed_log_count: missed.logger, missed_metrics_count: missed.metrics } })}\n`);
  }
  /** Once the VM is built (booted or loaded from a snapshot), every 60 s. */
  function startMetricsTimer(): void {
    metricsTimer ??= setInterval(flushMetrics, 60_000);
    metricsTimer.unref();
  }
  closers.push(() => {
    if (metricsTimer) clearInterval(metricsTimer);
    // a built VM's VMM writes its metrics once more as it stops (vmm/src/lib.rs)
    if (metricsTimer) flushMetrics();
    metricsTimer = undefined;
    for (const key of ['logger', 'metrics'] as const) {
      const fd = outputs[key];
      delete outputs[key];
      if (fd !== undefined) closeSync(fd);
    }
  });

  // --- the simulated guest -------------------------------------------------------------------
  let guest: 'off' | 'waiting' | 'running' | 'down' = 'off';
  let bootToken = '';
  let cmdline = '';
  let guestTimer: NodeJS.Timeout | undefined;
  function powerOff(code: number): void {
    if (ended) return;
    ended = true;
    if (code === 0) log('info', 'main', 'Firecracker exiting successfully. exit_code=0');
    else log('error', 'main', `Firecracker exiting with error. exit_code=${code}`);
    program?.kill('SIGKILL');
    guest = 'down';
    if (guestTimer) clearInterval(guestTimer);
    for (const c of closers) c();
    server.close();
    exit(code);
  }
  /**
   * The guest ends. aether-init reboots only when boot_args say `aether.vmm=firecracker` (and with
   * reboot=k Firecracker exits); otherwise it powers off, which on x86 Firecracker merely halts the
   * guest and leaves Firecracker running.
   */
  function guestPowerOff(): void {
    if (opts.haltOnPowerOff || !/(?:^|\s)aether\.vmm=firecracker(?:\s|$)/.test(cmdline)) {
      serial('reboot: System halted');
      guest = 'down';
      return;
    }
    powerOff(0);
  }
  function guestBoot(fromSnapshot: boolean): void {
    if (!fromSnapshot) {
      cmdline = String(cfg.bootSource?.boot_args ?? '');
      bootToken = /(?:^|\s)aether\.token=(\S+)/.exec(cmdline)?.[1] ?? '';
      if (!/(?:^|\s)quiet(?:\s|$)/.test(cmdline)) serial('[    0.000000] Linux version 6.1.0-fake (fake-vmm)');
      if (!/(?:^|\s)aether\.config=mmds(?:\s|$)/.test(cmdline)) {
        serial('AETHER-INIT: no aether.config=mmds on the command line');
        return powerOff(0);
      }
    }
    guest = 'waiting';
    // aether-init's mark that it now polls MMDS for its config (where templates are snapshotted)
    if (!fromSnapshot && !opts.noReadyLine) serial('AETHER-INIT READY');
    guestTimer ??= setInterval(guestTick, 5);
  }
  function guestTick(): void {
    if (state !== 'Running' || guest !== 'waiting') return;
    // the guest reaches MMDS only through an interface named in a V2 mmds/config
    const mc = cfg.mmdsConfig;
    if (!mc || mc.version !== 'V2' || !(mc.network_interfaces as string[]).length) return;
    const conf = (mmds.aether as Obj | undefined)?.config as Obj | undefined;
    if (!conf) return;
    if (typeof conf.token !== 'string' || conf.token !== bootToken || !bootToken) {
      serial('AETHER-INIT: config rejected');
      return guestPowerOff();
    }
    guest = 'running';
    serial(`AETHER-INIT: exec ${JSON.stringify(conf.cmd)}`);
    if (opts.runPrograms) {
      void runProgram(conf).catch((err: Error) => {
        serial(`AETHER-INIT: cannot start: ${err.message}`);
        guestPowerOff();
      });
      return;
    }
    if (opts.guestHttp) {
      const path = isAbsolute(opts.guestHttp) ? opts.guestHttp : join(dirname(opts.apiSock), opts.guestHttp);
      const program = createServer((req, res) => {
        if (req.url === '/__exit') {
          res.end('bye\n');
          serial('AETHER-INIT: program exited with status 0');
          setTimeout(() => guestPowerOff(), 5);
          return;
        }
        if (req.url?.startsWith('/__say/')) {
          // the program prints a line (its output is the serial console)
          serial(decodeURIComponent(req.url.slice('/__say/'.length)));
          res.end('said\n');
          return;
        }
        if (req.url?.startsWith('/__vmm-warn/')) {
          // the guest does something the VMM logs a warning about
          logWarn(decodeURIComponent(req.url.slice('/__vmm-warn/'.length)));
          res.end('warned\n');
          return;
        }
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ url: req.url, cmdline, config: conf }));
      });
      rmSync(path, { force: true });
      program.listen(path, () => serial(`program listening on ${conf.port}`));
      closers.push(() => program.close());
    }
  }

  let program: ChildProcess | undefined;
  function guestSockPath(): string | undefined {
    if (!opts.guestHttp) return undefined;
    return isAbsolute(opts.guestHttp) ? opts.guestHttp : join(dirname(opts.apiSock), opts.guestHttp);
  }
  /** aether-init's part: unpack vdb at /run/aether/code, exec cmd with exactly the config's env. */
  async function runProgram(conf: Obj): Promise<void> {
    const root = await mkdtemp(join(tmpdir(), 'fake-guest-'));
    closers.push(() => rmSync(root, { recursive: true, force: true }));
    const vdb = Object.values(cfg.drives)[1];
    const codeDir = join(root, 'code');
    mkdirSync(codeDir);
    if (vdb?.path_on_host !== undefined) {
      await new Promise<void>((resolve, reject) =>
        execFile('debugfs', ['-R', `rdump / ${codeDir}`, String(vdb.path_on_host)], (err) => (err ? reject(new Error(`debugfs: ${err.message}`)) : resolve())),
      );
    }
    const port = await freePort();
    const argv = (conf.cmd as string[]).map((a, i) => (i === 0 && a === 'node' ? process.execPath : a));
    const cwd = String(conf.cwd ?? '/').replace(/^\/run\/aether\/code/, codeDir);
    const env = { ...(conf.env as Record<string, string>), PORT: String(port) };
    const child = spawn(argv[0] as string, argv.slice(1), { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    program = child;
    for (const stream of [child.stdout, child.stderr]) {
      let buf = '';
      stream.setEncoding('utf8').on('data', (d: string) => {
        buf += d;
        let i: number;
        while ((i = buf.indexOf('\n')) >= 0) {
          serial(buf.slice(0, i));
          buf = buf.slice(i + 1);
        }
      });
    }
    child.once('error', (err) => serial(`AETHER-INIT: exec failed: ${err.message}`));
    child.once('exit', (code, signal) => {
      program = undefined;
      serial(`AETHER-INIT: program exited with ${signal ? `signal ${osConstants.signals[signal]}` : `status ${code}`}`);
      setTimeout(() => guestPowerOff(), 5);
    });
    const sock = guestSockPath();
    if (!sock) return;
    // publish the guest port once the program accepts (what the driver's forwarder does for a real guest)
    const probe = (): void => {
      if (ended || !program) return;
      const c = net.connect({ host: '127.0.0.1', port });
      c.once('connect', () => {
        c.destroy();
        const fwd = net.createServer((client) => {
          const up = net.connect({ host: '127.0.0.1', port });
          up.on('error', () => client.destroy());
          client.on('error', () => up.destroy());
          client.pipe(up).pipe(client);
        });
        rmSync(sock, { force: true });
        fwd.listen(sock);
        closers.push(() => fwd.close());
      });
      c.once('error', () => {
        c.destroy();
        setTimeout(probe, 10);
      });
    };
    probe();
  }

  // --- request handling ------------------------------------------------------------------------
  function match(method: string, path: string): { op: Operation; params: Record<string, string> } {
    for (const op of spec.operations) {
      const m = op.re.exec(path);
      if (!m || op.method !== method) continue;
      const params: Record<string, string> = {};
      op.params.forEach((p, i) => (params[p] = decodeURIComponent(m[i + 1] as string)));
      return { op, params };
    }
    throw new Refused(`Invalid request method and/or path: ${method} ${path}.`);
  }
  function mustExist(path: unknown, what: string): void {
    try {
      accessSync(String(path), constants.R_OK);
    } catch {
      throw new Refused(`${what}: cannot open ${String(path)}: No such file or directory (os error 2)`);
    }
  }
  function handle(method: string, path: string, raw: string): { status: number; body?: unknown } {
    const { op, params } = match(method, path);
    let body: unknown;
    if (method === 'GET' && raw !== '') throw new Refused('GET request cannot have a body.');
    if (op.body) {
      if (raw === '') {
        if (op.body.required || method !== 'GET') throw new Refused(`Empty ${method} request.`);
      } else {
        try {
          body = JSON.parse(raw);
        } catch (err) {
          throw new Refused(`An error occurred when deserializing the json body of a request: ${(err as Error).message}`);
        }
        if (!op.body.validate(body)) {
          const e = op.body.validate.errors?.[0];
          throw new Refused(`An error occurred when deserializing the json body of a request: ${e?.instancePath || 'body'} ${e?.message ?? 'invalid'}${e?.params && 'additionalProperty' in e.params ? `: unknown field \`${String(e.params.additionalProperty)}\`` : ''}`);
        }
      }
    } else if (raw !== '' && method !== 'GET') throw new Refused(`${method} ${op.template} takes no body.`);
    for (const [p, v] of Object.entries(params)) {
      if (!/^[A-Za-z0-9_]+$/.test(v)) throw new Refused('API Resource IDs can only contain alphanumeric characters and underscores.');
      const field = PATH_ID[p];
      if (field && (body as Obj | undefined)?.[field] !== v) throw new Refused('The id from the path does not match the id from the body!');
    }
    const b = (body ?? {}) as Obj;
    let phase = PHASE[op.operationId];
    if (op.operationId === 'createSyncAction') phase = b.action_type === 'InstanceStart' ? 'pre' : 'post';
    if (!phase) throw new Refused(`fake-vmm: ${op.operationId} is allowed by the spec but not simulated`);
    if (phase === 'pre' && state !== 'Not started') throw new Refused('The requested operation is not supported after starting the microVM.');
    if (phase === 'post' && state === 'Not started') throw new Refused('The requested operation is not supported before starting the microVM.');

    switch (op.operationId) {
      case 'describeInstance':
        return { status: 200, body: { app_name: 'Firecracker', id: opts.id ?? 'anonymous-instance', state, vmm_version: spec.version } };
      case 'getFirecrackerVersion':
        return { status: 200, body: { firecracker_version: spec.version } };
      case 'getMachineConfiguration':
        return { status: 200, body: cfg.machine };
      case 'getExportVmConfig':
        return { status: 200, body: exportConfig() };
      case 'putLogger':
        try {
          configureLogger(b);
        } catch (err) {
          throw new Refused(`Logger error: Failed to open target file: ${(err as Error).message}`);
        }
        return { status: 204 };
      case 'putMetrics':
        try {
          configureMetrics(String(b.metrics_path));
        } catch (err) {
          throw new Refused(`Metrics error: Cannot initialize the metrics system due to bad user input: ${(err as Error).message}`);
        }
        return { status: 204 };
      case 'putMachineConfiguration':
        bootResources = true;
        cfg.machine = { smt: false, track_dirty_pages: false, ...b };
        return { status: 204 };
      case 'patchMachineConfiguration':
        bootResources = true;
        cfg.machine = { ...cfg.machine, ...b };
        return { status: 204 };
      case 'putGuestBootSource':
        mustExist(b.kernel_image_path, 'Kernel');
        if (b.initrd_path !== undefined) mustExist(b.initrd_path, 'Initrd');
        bootResources = true;
        cfg.bootSource = b;
        return { status: 204 };
      case 'putGuestDriveByID': {
        if (b.path_on_host !== undefined) mustExist(b.path_on_host, 'Drive');
        if (b.is_root_device === true && Object.values(cfg.drives).some((d) => d.is_root_device === true && d.drive_id !== b.drive_id)) throw new Refused('A root block device already exists!');
        bootResources = true;
        cfg.drives[b.drive_id as string] = b;
        return { status: 204 };
      }
      case 'putGuestNetworkInterfaceByID': {
        if (b.guest_mac !== undefined && Object.values(cfg.ifaces).some((i) => i.guest_mac === b.guest_mac && i.iface_id !== b.iface_id)) throw new Refused(`The MAC address is already in use: ${String(b.guest_mac)}`);
        bootResources = true;
        cfg.ifaces[b.iface_id as string] = b;
        return { status: 204 };
      }
      case 'putGuestVsock': {
        const uds = String(b.uds_path);
        bootResources = true;
        const srv = net.createServer((c) => c.destroy()); // no guest listener: connections are closed
        srv.on('error', () => undefined);
        try {
          accessSync(uds);
          throw new Refused(`Cannot create backend for vsock device: UnixBind(Os { code: 98, kind: AddrInUse, message: "Address in use" })`);
        } catch (err) {
          if (err instanceof Refused) throw err;
        }
        srv.listen(uds);
        closers.push(() => srv.close());
        cfg.vsock = b;
        return { status: 204 };
      }
      case 'putMmdsConfig': {
        const ifs = b.network_interfaces as string[];
        if (ifs.length === 0) throw new Refused('The list of network interface IDs that allow forwarding MMDS requests is empty.');
        if (ifs.some((i) => !cfg.ifaces[i])) throw new Refused('The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.');
        bootResources = true;
        cfg.mmdsConfig = { version: 'V1', ipv4_address: '169.254.169.254', ...b };
        return { status: 204 };
      }
      case 'putMmds':
      case 'patchMmds': {
        if (raw.length > MMDS_LIMIT) throw new Refused('The MMDS patch request exceeds the data store limit.', 413);
        mmds = op.operationId === 'putMmds' ? (b as Obj) : (mergePatch(mmds, b) as Obj);
        mmdsTouched = true;
        return { status: 204 };
      }
      case 'getMmds':
        if (state !== 'Not started' && !cfg.mmdsConfig && !mmdsTouched) throw new Refused('The MMDS data store is not initialized.');
        return { status: 200, body: mmds };
      case 'createSyncAction':
        if (b.action_type === 'InstanceStart') {
          if (!cfg.bootSource) throw new Refused('Cannot start microvm without kernel configuration.');
          state = 'Running';
          flushMetrics();
          startMetricsTimer();
          guestBoot(false);
        } else if (b.action_type === 'FlushMetrics') flushMetrics();
        else if (b.action_type === 'SendCtrlAltDel') {
          // aether-init turns Ctrl+Alt+Del into SIGINT for the program, powering off when it ends
          if (!opts.ignoreCtrlAltDel && program) program.kill('SIGINT');
          else if (!opts.ignoreCtrlAltDel) {
            serial('reboot: Restarting system');
            setTimeout(() => powerOff(0), 20);
          }
        }
        return { status: 204 };
      case 'patchVm':
        state = b.state === 'Paused' ? 'Paused' : 'Running';
        return { status: 204 };
      case 'createSnapshot': {
        if (state !== 'Paused') throw new Refused('Cannot save the microVM state: the microVM is not paused.');
        writeFileSync(String(b.snapshot_path), JSON.stringify({ fakeVmmSnapshot: 1, version: spec.version, cfg, guest, bootToken, cmdline }));
        const fd = openSync(String(b.mem_file_path), 'w');
        ftruncateSync(fd, Number(cfg.machine.mem_size_mib) * 1024 * 1024);
        closeSync(fd);
        return { status: 204 };
      }
      case 'loadSnapshot': {
        if (bootResources) throw new Refused('Loading a microVM snapshot not allowed after configuring boot-specific resources.');
        const hasBackend = b.mem_backend !== undefined;
        const hasFile = b.mem_file_path !== undefined;
        if (hasBackend && hasFile) throw new Refused('too many fields: either `mem_backend` or `mem_file_path` exclusively is required.');
        if (!hasBackend && !hasFile) throw new Refused('missing field: either `mem_backend` or `mem_file_path` is required');
        const backend = (b.mem_backend as Obj | undefined) ?? { backend_type: 'File', backend_path: b.mem_file_path };
        if (backend.backend_type !== 'File') throw new Refused('fake-vmm: only the File memory backend is simulated');
        mustExist(backend.backend_path, 'Memory file');
        let snap: { fakeVmmSnapshot?: number; cfg: VmConfig; guest: typeof guest; bootToken: string; cmdline: string };
        try {
          snap = JSON.parse(readFileSync(String(b.snapshot_path), 'utf8')) as typeof snap;
        } catch {
          throw new Refused(`Load snapshot error: Failed to restore from snapshot: cannot read microVM state from ${String(b.snapshot_path)}`);
        }
        if (snap.fakeVmmSnapshot !== 1) throw new Refused('Load snapshot error: invalid snapshot file');
        // the logger and metrics are not in a snapshot: this process's stay
        Object.assign(cfg, snap.cfg);
        for (const o of (b.network_overrides as Obj[] | undefined) ?? []) {
          const iface = cfg.ifaces[o.iface_id as string];
          if (!iface) throw new Refused(`Load snapshot error: network override for unknown interface ${String(o.iface_id)}`);
          iface.host_dev_name = o.host_dev_name;
        }
        if (b.vsock_override && cfg.vsock) cfg.vsock = { ...cfg.vsock, uds_path: (b.vsock_override as Obj).uds_path };
        ({ bootToken, cmdline } = snap);
        state = b.resume_vm === true ? 'Running' : 'Paused';
        startMetricsTimer();
        // MMDS data is not part of a snapshot; the guest goes on waiting for its config
        if (snap.guest === 'waiting') guestBoot(true);
        return { status: 204 };
      }
    }
    throw new Refused(`fake-vmm: ${op.operationId} is allowed by the spec but not simulated`);
  }
  function exportConfig(): Obj {
    return {
      'machine-config': cfg.machine,
      ...(cfg.bootSource ? { 'boot-source': cfg.bootSource } : {}),
      drives: Object.values(cfg.drives),
      'network-interfaces': Object.values(cfg.ifaces),
      ...(cfg.vsock ? { vsock: cfg.vsock } : {}),
      ...(cfg.mmdsConfig ? { 'mmds-config': cfg.mmdsConfig } : {}),
    };
  }

  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString();
      const method = req.method ?? 'GET';
      const path = (req.url ?? '/').split('?')[0] as string;
      // api_server/parsed_request.rs: every request, before it is parsed (MMDS bodies left out)
      const verb = `${method.charAt(0)}${method.slice(1).toLowerCase()}`;
      log('info', 'fc_api', `The API server received a ${verb} request on ${JSON.stringify(path)}${raw !== '' && path !== '/mmds' ? ` with body ${JSON.stringify(raw)}` : ''}.`);
      let out: { status: number; body?: unknown };
      try {
        out = handle(method, path, raw);
      } catch (err) {
        out = err instanceof Refused ? { status: err.status, body: { fault_message: err.message } } : { status: 400, body: { fault_message: String(err) } };
      }
      if (opts.record) {
        let parsed: unknown = raw;
        try {
          parsed = raw === '' ? undefined : JSON.parse(raw);
        } catch {
          // keep the raw text
        }
        appendFileSync(opts.record, `${JSON.stringify({ method, path, body: parsed, status: out.status, fault: (out.body as Obj | undefined)?.fault_message })}\n`);
      }
      res.statusCode = out.status;
      res.setHeader('server', 'Firecracker API');
      if (out.body === undefined) res.end();
      else {
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify(out.body));
      }
    });
  });
  // main.rs: the launch flags configure the logger, then it says what runs, then metrics
  const level = opts.level !== undefined ? parseLevel(opts.level) : undefined;
  if (opts.level !== undefined && !level) throw new FakeVmmStartError(`Invalid value for logger level: Failed to parse string to level filter: ${opts.level}.Possible values: [Error, Warning, Info, Debug]`, 152);
  try {
    configureLogger({ log_path: opts.logPath, level, ...(opts.showLevel ? { show_level: true } : {}) });
  } catch (err) {
    throw new FakeVmmStartError(`Could not initialize logger: Failed to open target file: ${(err as Error).message}`, 1);
  }
  log('info', 'main', `Running Firecracker v${spec.version}`);
  if (opts.metricsPath !== undefined) {
    try {
      configureMetrics(opts.metricsPath);
    } catch (err) {
      throw new FakeVmmStartError(`Could not initialize metrics: Cannot initialize the metrics system due to bad user input: ${(err as Error).message}`, 1);
    }
  }
  try {
    accessSync(opts.apiSock);
    throw new Error(`Failed to open the API socket at: ${opts.apiSock}. Check that it is not already used.`);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.apiSock, resolve);
  });
  log('info', 'main', `Listening on API socket (${JSON.stringify(opts.apiSock)}).`);
  log('info', 'fc_api', 'API server started.');
  return {
    close: async () => {
      ended = true;
      program?.kill('SIGKILL');
      if (guestTimer) clearInterval(guestTimer);
      for (const c of closers) c();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** RFC 7396 JSON merge patch, as PATCH /mmds applies it. */
function mergePatch(target: unknown, patch: unknown): unknown {
  if (patch === null || typeof patch !== 'object' || Array.isArray(patch)) return patch;
  const out: Obj = target !== null && typeof target === 'object' && !Array.isArray(target) ? { ...(target as Obj) } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

if (process.argv[1] && new URL(import.meta.url).pathname === process.argv[1]) {
  const { values } = parseArgs({
    options: {
      'api-sock': { type: 'string', default: '/run/firecracker.socket' },
      id: { type: 'string' },
      spec: { type: 'string' },
      record: { type: 'string' },
      'guest-http': { type: 'string' },
      'ignore-ctrl-alt-del': { type: 'boolean', default: false },
      'run-programs': { type: 'boolean', default: false },
      'halt-on-poweroff': { type: 'boolean', default: false },
      'no-ready-line': { type: 'boolean', default: false },
      // the real binary's logger and metrics flags
      'log-path': { type: 'string' },
      level: { type: 'string' },
      'show-level': { type: 'boolean', default: false },
      'metrics-path': { type: 'string' },
    },
    strict: true,
  });
  const apiSock = values['api-sock'];
  let fake: { close(): Promise<void> } | undefined;
  const stop = (): void => {
    void fake?.close().finally(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  startFakeVmm({
    apiSock,
    ...(values.id !== undefined ? { id: values.id } : {}),
    ...(values.spec !== undefined ? { spec: values.spec } : {}),
    ...(values.record !== undefined ? { record: values.record } : {}),
    ...(values['guest-http'] !== undefined ? { guestHttp: values['guest-http'] } : {}),
    ignoreCtrlAltDel: values['ignore-ctrl-alt-del'],
    runPrograms: values['run-programs'],
    haltOnPowerOff: values['halt-on-poweroff'],
    noReadyLine: values['no-ready-line'],
    ...(values['log-path'] !== undefined ? { logPath: values['log-path'] } : {}),
    ...(values.level !== undefined ? { level: values.level } : {}),
    showLevel: values['show-level'],
    ...(values['metrics-path'] !== undefined ? { metricsPath: values['metrics-path'] } : {}),
  }).then(
    (f) => {
      fake = f;
      process.stderr.write(`fake-vmm: API server started on ${apiSock}\n`);
    },
    (err: Error) => {
      process.stderr.write(`fake-vmm: ${err.message}\n`);
      process.exit(err instanceof FakeVmmStartError ? err.exitCode : 1);
    },
  );
}
