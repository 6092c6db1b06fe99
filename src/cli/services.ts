import type { Command } from 'commander';
import { AetherError } from '../core/index.ts';
import { checkSpecs, formatErrors, planDeploy, specSource, type Assignments, type DeployPlan, type SpecCheck } from '../deploy/index.ts';
import { nodesFromAgents } from '../deploy/index.ts';
import { isClientError } from '../client/index.ts';
import type { AgentRecord } from '../spec/index.ts';
import { formatFields, formatTable, isUnreachable, printJson, runAction, withClient, type CliDeps, type GlobalOptions } from './output.ts';

/** Human summary of a plan: what starts, stops, moves, and why; errors naming file and field. */
export function formatPlan(plan: DeployPlan, revision: string): string {
  const lines: string[] = [`revision ${revision}`];
  if (!plan.ok) {
    lines.push('refused: nothing would change', formatErrors(plan.errors));
    return lines.join('\n') + '\n';
  }
  // "no changes" beside pending services would read as a contradiction: say what holds.
  if (plan.changes.length === 0) lines.push(plan.unplaced.length === 0 ? 'no changes' : 'nothing would start, stop or move');
  for (const c of plan.changes) {
    if (c.kind === 'move') lines.push(`move    ${c.service}  ${c.from} -> ${c.to}  (${c.why})`);
    else lines.push(`${c.kind.padEnd(7)} ${c.service}  on ${c.node}  (${c.why})`);
  }
  for (const u of plan.unplaced) lines.push(`pending ${u.service}  (${u.message})`);
  for (const w of plan.warnings) lines.push(`warning ${w.file}: ${w.field}: ${w.message}`);
  return lines.join('\n') + '\n';
}

/**
 * The specs checked without a platform to compare with: whether they are valid, and that the plan
 * (what would start, stop or move) is not known, with the connection error that says why.
 */
export function formatSpecCheck(check: SpecCheck, revision: string, unreachable: string): string {
  const lines: string[] = [`revision ${revision}`];
  if (!check.ok) lines.push('refused: nothing would change', formatErrors(check.errors));
  else {
    const names = check.services.map((s) => s.name);
    lines.push(`valid: ${names.length} service${names.length === 1 ? '' : 's'} (${names.join(', ')})`);
  }
  lines.push(`not compared with the platform: ${unreachable}`);
  if (check.ok) lines.push('what would start, stop or move is known only against a running platform (its nodes and placements)');
  for (const w of check.warnings) lines.push(`warning ${w.file}: ${w.field}: ${w.message}`);
  return lines.join('\n') + '\n';
}

export function registerServiceCommands(program: Command, deps: CliDeps): void {
  program
    .command('deploy [source]')
    .description('deploy services: with --dry-run, print what <dir|git-url[#branch]> would start, stop and move; without, apply the configured --source now')
    .option('--dry-run', 'plan only, change nothing')
    .action(
      runAction(deps, async (source: string | undefined, opts: { dryRun?: boolean }, cmd: Command) => {
        const g = cmd.optsWithGlobals<GlobalOptions>();
        if (!opts.dryRun) {
          if (source) throw new AetherError('AETHER_ERR_VALIDATION', 'the platform deploys from its --source; run `aether deploy <source> --dry-run` to preview, or start `aether up --source <source>`');
          const r = await withClient(g, deps, async (c) => {
            await c.triggerDeploy();
            return c.deployStatus();
          });
          if (g.json) printJson(deps.io, r);
          // No result ever: nothing deploys here (an `aether up` without --source, or no deployer running).
          else if (!r.at) deps.io.out('deploy requested; no deploy has run yet: services come from a deployer (`aether up --source <dir|git-url>`, or `aether deployer`)\n');
          else deps.io.out(`deploy requested; last result: revision ${r.revision ?? '-'} ${r.ok ? 'ok' : 'refused'}\n`);
          return;
        }
        if (!source) throw new AetherError('AETHER_ERR_VALIDATION', 'give the specs to plan: aether deploy <dir|git-url[#branch]> --dry-run');
        const { revision, files } = await specSource(source).read();
        // Planned against the running platform's nodes and placements. With none reachable only the
        // specs are checked: a plan against no nodes and nothing running would be made up. Any
        // other failure (a wrong token, a server error) is an error, as in every command.
        let live: [AgentRecord[], Assignments];
        try {
          live = await withClient(g, deps, async (c) => Promise.all([c.listNodes(), c.assignments()]));
        } catch (err) {
          if (!isClientError(err) || !isUnreachable(err)) throw err;
          const unreachable = `${err.code}: ${err.message}`;
          const check = checkSpecs(files);
          if (g.json) printJson(deps.io, { revision, offline: true, unreachable, ok: check.ok, errors: check.errors, warnings: check.warnings, services: check.services.map((s) => s.name) });
          else deps.io.out(formatSpecCheck(check, revision, unreachable));
          if (!check.ok) deps.io.setExitCode(1);
          return;
        }
        const plan = planDeploy(files, nodesFromAgents(live[0]), live[1]);
        if (g.json) printJson(deps.io, { revision, offline: false, ...plan });
        else deps.io.out(formatPlan(plan, revision));
        if (!plan.ok) deps.io.setExitCode(1);
      }),
    );

  const svc = program.command('svc').description('services deployed from specs');
  svc
    .command('ls')
    .alias('list')
    .description('list services: node, state, health, host')
    .action(
      runAction(deps, async (_o: unknown, cmd: Command) => {
        const g = cmd.optsWithGlobals<GlobalOptions>();
        const list = await withClient(g, deps, (c) => c.listServices());
        if (g.json) printJson(deps.io, list);
        else if (list.length === 0) deps.io.out('no services\n');
        else deps.io.out(formatTable(['NAME', 'NODE', 'STATE', 'HEALTH', 'HOST', 'RESTARTS'], list.map((s) => [s.name, s.node ?? '-', s.state, s.health, s.host ?? '-', String(s.restarts)])));
      }),
    );
  svc
    .command('status <name>')
    .description('one service: where it runs, its state, health and config')
    .action(
      runAction(deps, async (name: string, _o: unknown, cmd: Command) => {
        const g = cmd.optsWithGlobals<GlobalOptions>();
        const s = await withClient(g, deps, (c) => c.getService(name));
        if (g.json) printJson(deps.io, s);
        else
          deps.io.out(
            formatFields([
              ['name', s.name],
              ['node', s.node ?? '-'],
              ['state', s.state],
              ['health', s.health],
              ['address', s.address ?? '-'],
              ['host', s.host ?? '-'],
              ['image', s.image],
              ['resources', `${s.vcpus} vCPU, ${s.memory_mb} MiB`],
              ['restarts', String(s.restarts)],
              ['revision', s.revision ?? '-'],
              ['message', s.message ?? '-'],
            ]),
          );
      }),
    );
  svc
    .command('restart <name>')
    .description('restart a service where it runs')
    .action(
      runAction(deps, async (name: string, _o: unknown, cmd: Command) => {
        const g = cmd.optsWithGlobals<GlobalOptions>();
        const r = await withClient(g, deps, (c) => c.restartService(name));
        if (g.json) printJson(deps.io, r);
        else deps.io.out(`restart of ${r.name} requested (${r.request_id})\n`);
      }),
    );

  svc
    .command('logs <name>')
    .description("the last lines a service's instances printed")
    .option('--tail <n>', 'how many lines', (v: string) => Number(v), 100)
    .action(
      runAction(deps, async (name: string, opts: { tail: number }, cmd: Command) => {
        const g = cmd.optsWithGlobals<GlobalOptions>();
        const lines = await withClient(g, deps, (c) => c.serviceLogs(name, opts.tail));
        if (g.json) printJson(deps.io, lines);
        else for (const l of lines) deps.io.out(`${l.text}\n`);
      }),
    );

  program
    .command('nodes')
    .description('nodes (agents): capacity, node type and services')
    .action(
      runAction(deps, async (_o: unknown, cmd: Command) => {
        const g = cmd.optsWithGlobals<GlobalOptions>();
        const nodes = await withClient(g, deps, (c) => c.listNodes());
        if (g.json) printJson(deps.io, nodes);
        else if (nodes.length === 0) deps.io.out('no nodes\n');
        else
          deps.io.out(
            formatTable(
              ['NODE', 'TYPE', 'VCPU', 'MEMORY', 'ROUTER', 'SERVICES'],
              nodes.map((n) => [n.agent_id, n.node_type ?? '*', `${n.used.vcpu}/${n.capacity.vcpu}`, `${n.used.memory_mb}/${n.capacity.memory_mb}MiB`, n.router_url ?? '-', n.services.join(',') || '-']),
            ),
          );
      }),
    );
}
