import type { Command } from 'commander';
import type { ConfigInput, Role } from '../config/index.ts';

export type StartNode = (role: Role, flags: ConfigInput & { config?: string }) => Promise<{ url: string; close(): Promise<void> }>;

const int = (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n)) throw new Error(`not an integer: ${v}`);
  return n;
};

/** `aether up | gateway | agent`: long-running processes; SIGINT/SIGTERM stop them within 10 s. */
export function registerServeCommands(program: Command, start: StartNode): void {
  const common = (cmd: Command): Command =>
    cmd
      .option('--port <port>', 'port to listen on (env AETHER_PORT)', int)
      .option('--host <host>', 'address to bind (env AETHER_HOST)')
      .option('--config <file>', 'YAML file with any of these options (env AETHER_CONFIG)')
      .option('--store <url>', 'sqlite:///path | etcd://host:2379[,host:2379] (env AETHER_STORE)')
      .option('--queue <url>', 'memory:// | redis://host:6379 (env AETHER_QUEUE)')
      .option('--blob <url>', 'file:///path | s3://bucket?endpoint=http://host:port&region=r (env AETHER_BLOB)')
      .option('--admin-token-file <file>', 'file holding the admin token (else AETHER_ADMIN_TOKEN)')
      .option('--cluster-token-file <file>', 'file holding the gateway<->agent token (else AETHER_CLUSTER_TOKEN; `up` derives one)')
      .option('--log-level <level>', 'trace|debug|info|warn|error (env AETHER_LOG_LEVEL)');
  const agentOpts = (cmd: Command): Command =>
    cmd
      .option('--sandbox <kind>', 'default sandbox for new functions: process | qemu | firecracker (env AETHER_SANDBOX)')
      .option('--sandboxes <kinds>', 'sandbox kinds this node runs: auto (what `aether doctor` finds) or a list like process,qemu (env AETHER_SANDBOXES)')
      .option('--isolation <level>', 'auto | namespaces | none (env AETHER_ISOLATION)')
      .option('--advertise <host>', 'address gateways use to reach this agent (env AETHER_ADVERTISE)')
      .option('--agent-id <id>', 'stable agent id (default: kept in the data dir)')
      .option('--capacity-instances <n>', 'max instances on this node', int)
      .option('--capacity-memory-mb <n>', 'memory for instances on this node', int)
      .option('--startup-timeout-ms <n>', 'how long an instance may take to listen', int)
      .option('--router-port <port>', 'edge router for services: routes by Host (metadata.host) to local and peer instances (env AETHER_ROUTER_PORT)', int)
      .option('--node-type <type>', "firework's node_type of this node: only matching services are placed here (default: any) (env AETHER_NODE_TYPE)");
  const deployOpts = (cmd: Command): Command =>
    cmd
      .option('--source <dir|git-url[#branch]>', 'service specs in firework layout: defaults.yaml, services/, tenants/ (env AETHER_SOURCE)')
      .option('--poll <duration>', 'how often the source is read, e.g. 2s (default 30s) (env AETHER_POLL)')
      .option('--export-dir <dir>', "also write firework's nodes/<node>.yaml files here (env AETHER_EXPORT_DIR)");

  // --data-dir is a global option (the client commands read it too).
  const run = (role: Role) => async (_opts: Record<string, unknown>, cmd: Command) => {
    const opts = cmd.optsWithGlobals<Record<string, unknown>>();
    const flags: ConfigInput & { config?: string } = {};
    const map: Record<string, keyof ConfigInput | 'config'> = {
      port: 'port', host: 'host', dataDir: 'data_dir', config: 'config', store: 'store', queue: 'queue', blob: 'blob',
      adminTokenFile: 'admin_token_file', clusterTokenFile: 'cluster_token_file', logLevel: 'log_level', sandbox: 'sandbox', sandboxes: 'sandboxes', isolation: 'isolation', advertise: 'advertise',
      agentId: 'agent_id', capacityInstances: 'capacity_instances', capacityMemoryMb: 'capacity_memory_mb', startupTimeoutMs: 'startup_timeout_ms',
      nodeType: 'node_type', routerPort: 'router_port', source: 'source', poll: 'poll', exportDir: 'export_dir',
    };
    for (const [k, v] of Object.entries(opts)) {
      const key = map[k];
      if (key && v !== undefined) (flags as Record<string, unknown>)[key] = v;
    }
    const node = await start(role, flags);
    let stopping = false;
    const stop = (signal: string): void => {
      if (stopping) return;
      stopping = true;
      process.stdout.write(`${signal}: shutting down\n`);
      const force = setTimeout(() => {
        process.stderr.write('shutdown took longer than 10 s; exiting\n');
        process.exit(1);
      }, 10_000);
      force.unref();
      node.close().then(
        () => process.exit(0),
        () => process.exit(1),
      );
    };
    process.on('SIGINT', () => stop('SIGINT'));
    process.on('SIGTERM', () => stop('SIGTERM'));
  };

  deployOpts(agentOpts(common(program.command('up').description('run the whole platform in one process (gateway + agent, embedded storage)')))).action(run('up'));
  common(program.command('gateway').description('run a gateway (API + invocation routing) on etcd + Redis + S3')).action(run('gateway'));
  agentOpts(common(program.command('agent').description('run an agent (sandboxes) on etcd + Redis + S3'))).action(run('agent'));
  deployOpts(common(program.command('deployer').description('run the services deployer (specs -> placements) on etcd'))).action(run('deployer'));
}
