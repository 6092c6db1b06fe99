import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Command } from 'commander';
import { registerServeCommands } from './serve.ts';

const program = new Command();
registerServeCommands(program, () => Promise.reject(new Error('not started in this test')));
const options = (name: string): Map<string, string> => {
  const cmd = program.commands.find((c) => c.name() === name);
  assert.ok(cmd, name);
  return new Map(cmd.options.map((o) => [o.long ?? '', o.description]));
};

test('serve commands: the deployer lists only what it uses (store, config, log level and file, deploy options)', () => {
  assert.deepEqual([...options('deployer').keys()].sort(), ['--config', '--export-dir', '--log-file', '--log-level', '--poll', '--source', '--store']);
  assert.match(options('deployer').get('--store') ?? '', /^etcd:\/\/.*required/);
  assert.match(options('deployer').get('--source') ?? '', /required/);
});

test('serve commands: agents take no admin token file; distributed roles are offered only the drivers they accept', () => {
  const agent = options('agent');
  for (const f of ['--admin-token-file', '--sandbox', '--source']) assert.equal(agent.has(f), false, f);
  for (const f of ['--queue', '--blob', '--cluster-token-file', '--store', '--data-dir', '--data-plane']) assert.equal(agent.has(f), true, f);
  assert.match(agent.get('--data-plane') ?? '', /HAProxy on --port/);
  assert.doesNotMatch(agent.get('--data-dir') ?? '', /admin token/);
  for (const role of ['gateway', 'agent', 'deployer']) {
    assert.doesNotMatch(options(role).get('--store') ?? '', /sqlite/, `${role}: the embedded store works only in up`);
    assert.doesNotMatch(options(role).get('--queue') ?? '', /memory/, `${role}: the memory queue works only in up`);
  }
  const gateway = options('gateway');
  for (const f of ['--admin-token-file', '--data-plane', '--sandbox', '--queue', '--blob']) assert.equal(gateway.has(f), true, f);
  assert.equal(gateway.has('--router-port'), false);
  assert.match(options('up').get('--store') ?? '', /default sqlite/);
});

test('serve commands: a flag a role does not take is refused', async () => {
  const p = new Command().exitOverride().configureOutput({ writeErr: () => undefined });
  registerServeCommands(p, () => Promise.reject(new Error('not started')));
  await assert.rejects(p.parseAsync(['node', 'aether', 'deployer', '--queue', 'redis://x:6379', '--store', 'etcd://x:2379', '--source', '/specs']), /unknown option '--queue'/);
});

test('serve commands: a number flag that is not an integer names the option', async () => {
  const p = new Command().exitOverride().configureOutput({ writeErr: () => undefined });
  registerServeCommands(p, () => Promise.reject(new Error('not started')));
  await assert.rejects(p.parseAsync(['node', 'aether', 'up', '--port', 'abc']), /option '--port <port>' argument 'abc' is invalid\. must be an integer/);
  await assert.rejects(p.parseAsync(['node', 'aether', 'up', '--router-port', '']), /option '--router-port <port>' argument '' is invalid/);
});
