import type { Command } from 'commander';
import type { ConfigInput, Role } from '../config/index.ts';
import { systemClock } from '../core/index.ts';
import { intArg } from './flags.ts';
import { launcherChain, watchLauncher } from './launcher.ts';

export type StartNode = (role: Role, flags: ConfigInput & { config?: string }) => Promise<{ url: string; close(): Promise<void> }>;

// Commander's InvalidArgumentError: the message names the option (`option '--port <port>' argument 'abc' is invalid`).
const int = intArg;

/** `aether up | gateway | agent`: long-running processes; SIGINT/SIGTERM, or the end of the npm/npx
 * process or wrapper that launched them, stop them within 10 s. */
export function registerServeCommands(program: Command, start: StartNode): void {
  // Each role's defaults in its --help (src/config applies them; flags here stay unset so env and
  // the YAML file still count).
  const common = (cmd: Command, role: Role): Command => {
    const up = role === 'up';
    // Each role lists only what it uses: the deployer talks to the store alone (no data dir, queue,
    // blob store, secrets or port); agents never read the admin token nor carry gateway traffic.
    const dataDir: Partial<Record<Role, string>> = {
      up: 'admin token, store, code, runtime state',
      gateway: 'temporary uploads',
      agent: 'agent id, code cache, instances\' runtime state (a restarted agent adopts its instances from it)',
    };
    const what = dataDir[role];
    if (what) cmd.option('--data-dir <dir>', `data directory: ${what} (env AETHER_DATA_DIR; default ./.aether)`);
    // The deployer serves nothing (it talks only to the store): no port to choose.
    if (role !== 'deployer') {
      cmd
        .option('--port <port>', `port to listen on (env AETHER_PORT; default ${role === 'agent' ? '0: any free port' : '8080'})`, int)
        .option('--host <host>', `address to bind (env AETHER_HOST; default ${role === 'agent' ? '0.0.0.0' : '127.0.0.1'})`);
    }
    cmd
      .option('--config <file>', 'YAML file with any of these options (env AETHER_CONFIG)')
      .option('--store <url>', up ? 'sqlite:///path | etcd://host:2379[,host:2379] (env AETHER_STORE; default sqlite://<data-dir>/store.db)' : 'etcd://host:2379[,host:2379] (env AETHER_STORE; required)');
    if (role !== 'deployer') {
      cmd
        .option('--queue <url>', up ? 'memory:// | redis://host:6379 (env AETHER_QUEUE; default memory://)' : 'redis://host:6379 (env AETHER_QUEUE; required)')
        .option('--blob <url>', `file:///path | s3://bucket?endpoint=http://host:port&region=r (env AETHER_BLOB; ${up ? 'default file://<data-dir>/blobs' : 'required'})`);
    }
    if (role === 'up' || role === 'gateway') cmd.option('--admin-token-file <file>', `file holding the admin token (else AETHER_ADMIN_TOKEN${up ? '; default <data-dir>/admin.token, generated on first start' : '; one of them is required'})`);
    if (role !== 'deployer') cmd.option('--cluster-token-file <file>', `file holding the gateway<->agent token (else AETHER_CLUSTER_TOKEN${up ? '; default derived from the admin token' : '; one of them is required'})`);
    cmd.option('--log-level <level>', 'trace|debug|info|warn|error (env AETHER_LOG_LEVEL; default info)');
    cmd.option(
      '--log-file <file>',
      `append the JSON logs to this file, warnings and errors also shown on stderr; - for JSON on stderr (env AETHER_LOG_FILE; default ${up ? '<data-dir>/aether.log when stderr is a terminal, else -' : '-'})`,
    );
    if (role === 'up' || role === 'gateway') cmd.option('--data-plane <kind>', 'auto | haproxy | node: who carries warm invocations (env AETHER_DATA_PLANE; default auto)');
    if (role === 'agent') cmd.option('--data-plane <kind>', "auto | haproxy | node: who carries gateways' forwards to this node's instances, its own HAProxy on --port or its Node server (env AETHER_DATA_PLANE; default auto: haproxy when installed and sandboxes are reached over TCP)");
    return cmd;
  };
  // Chosen where functions are created (the gateway's API), not where they run.
  const sandboxOpt = (cmd: Command): Command => cmd.option('--sandbox <kind>', 'default sandbox for new functions: process | qemu | firecracker (env AETHER_SANDBOX; default process)');
  const agentOpts = (cmd: Command): Command =>
    cmd
      .option('--sandboxes <kinds>', 'sandbox kinds this node runs: auto (what `aether doctor` finds) or a list like process,qemu (env AETHER_SANDBOXES; default auto)')
      .option('--isolation <level>', 'auto | namespaces | none (env AETHER_ISOLATION; default auto: namespaces when root)')
      .option('--sandbox-network <mode>', 'auto | veth | forwarder: how process sandboxes are reached (env AETHER_SANDBOX_NETWORK; default auto: veth when root with ip and nft)')
      .option('--sandbox-net-pool <cidr>', 'the /16 of the per-sandbox /30s (env AETHER_SANDBOX_NET_POOL; default 10.213.0.0/16)')
      .option('--advertise <host>', 'address gateways use to reach this agent (env AETHER_ADVERTISE; default the --host, 127.0.0.1 for 0.0.0.0)')
      .option('--agent-id <id>', 'stable agent id (default: kept in the data dir)')
      .option('--capacity-instances <n>', 'max instances on this node (default 64)', int)
      .option('--capacity-memory-mb <n>', 'memory for instances on this node (default 75% of RAM)', int)
      .option('--startup-timeout-ms <n>', 'how long an instance may take to listen (default 30000)', int)
      .option('--router-port <port>', 'edge router for services: routes by Host (metadata.host) to local and peer instances (env AETHER_ROUTER_PORT; default: no router)', int)
      .option('--traefik-config-dir <dir>', "write the node's routes there as a Traefik file-provider config, replaced atomically (env AETHER_TRAEFIK_CONFIG_DIR)")
      .option('--node-type <type>', "firework's node_type of this node: only matching services are placed here (env AETHER_NODE_TYPE; default: any)");
  const deployOpts = (cmd: Command, deployer = false): Command =>
    cmd
      .option('--source <dir|git-url[#branch]>', 'service specs in firework layout: defaults.yaml, services/, tenants/ (env AETHER_SOURCE)' + (deployer ? '; required' : ''))
      .option('--poll <duration>', 'how often the source is read, e.g. 2s (env AETHER_POLL; default 30s)')
      .option('--export-dir <dir>', "also write firework's nodes/<node>.yaml files here (env AETHER_EXPORT_DIR)");

  // --data-dir is also a global option (the client commands read it): either place works.
  const run = (role: Role) => async (_opts: Record<string, unknown>, cmd: Command) => {
    const opts = cmd.optsWithGlobals<Record<string, unknown>>();
    const flags: ConfigInput & { config?: string } = {};
    const map: Record<string, keyof ConfigInput | 'config'> = {
      port: 'port', host: 'host', dataDir: 'data_dir', config: 'config', store: 'store', queue: 'queue', blob: 'blob',
      adminTokenFile: 'admin_token_file', clusterTokenFile: 'cluster_token_file', logLevel: 'log_level', logFile: 'log_file', sandbox: 'sandbox', sandboxes: 'sandboxes', isolation: 'isolation', sandboxNetwork: 'sandbox_network', sandboxNetPool: 'sandbox_net_pool', advertise: 'advertise', dataPlane: 'data_plane',
      agentId: 'agent_id', capacityInstances: 'capacity_instances', capacityMemoryMb: 'capacity_memory_mb', startupTimeoutMs: 'startup_timeout_ms',
      nodeType: 'node_type', routerPort: 'router_port', traefikConfigDir: 'traefik_config_dir', source: 'source', poll: 'poll', exportDir: 'export_dir',
    };
    for (const [k, v] of Object.entries(opts)) {
      const key = map[k];
      if (key && v !== undefined) (flags as Record<string, unknown>)[key] = v;
    }
    // Taken before starting: the launcher may already be gone by the time we listen.
    const chain = launcherChain(process.ppid, process.env);
    delete process.env['AETHER_LAUNCHER_PID'];
    // A process manager may close our output when it stops the launcher: shutting down must go on.
    for (const s of [process.stdout, process.stderr]) s.on('error', () => undefined);
    // Signals count from the first moment: one during startup stops the node once it is up
    // (so whatever it started is cleaned up), not half-way with sandboxes left behind.
    const up: { node?: { close(): Promise<void> } } = {};
    let stopping: string | undefined;
    const shutdown = (n: { close(): Promise<void> }): void => {
      process.stdout.write(`${stopping}: shutting down\n`);
      const force = setTimeout(() => {
        process.stderr.write('shutdown took longer than 10 s; exiting\n');
        process.exit(1);
      }, 10_000);
      force.unref();
      n.close().then(
        () => process.exit(0),
        () => process.exit(1),
      );
    };
    const stop = (why: string): void => {
      if (stopping) return;
      stopping = why;
      unwatch();
      if (up.node) shutdown(up.node);
    };
    process.on('SIGINT', () => stop('SIGINT'));
    process.on('SIGTERM', () => stop('SIGTERM'));
    const unwatch = watchLauncher({ chain, clock: systemClock, onGone: (pid) => stop(`launcher (pid ${pid}) exited`) });
    up.node = await start(role, flags);
    if (stopping) shutdown(up.node);
  };

  deployOpts(sandboxOpt(agentOpts(common(program.command('up').description('run the whole platform in one process (gateway + agent, embedded storage)'), 'up')))).action(run('up'));
  sandboxOpt(common(program.command('gateway').description('run a gateway (API + invocation routing) on etcd + Redis + S3'), 'gateway')).action(run('gateway'));
  agentOpts(common(program.command('agent').description('run an agent (sandboxes) on etcd + Redis + S3'), 'agent')).action(run('agent'));
  deployOpts(common(program.command('deployer').description('run the services deployer (specs -> placements) on etcd'), 'deployer'), true).action(run('deployer'));
}
