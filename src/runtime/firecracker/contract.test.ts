// The runtime contract, run by the Firecracker driver against the spec-checking fake VMM, which
// here runs the contract's real programs (--run-programs) as the guest would.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runtimeContract } from '../index.ts';
import { createFirecrackerRuntime, FAKE_VMM, socketNetwork } from './index.ts';

runtimeContract('firecracker (fake VMM)', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'fc-contract-'));
  const kernel = join(dir, 'vmlinux');
  const root = join(dir, 'root.ext4');
  await writeFile(kernel, 'kernel');
  await writeFile(root, 'root');
  const runtime = createFirecrackerRuntime({
    stateDir: join(dir, 'state'),
    agentId: 'agent-contract',
    guest: async () => ({ kernel }),
    baseImage: async () => root,
    network: socketNetwork(),
    vmmCommand: [process.execPath, FAKE_VMM, '--guest-http', 'guest.sock', '--run-programs'],
  });
  return {
    runtime,
    codeRoot: join(dir, 'code'),
    cleanup: async () => {
      await runtime.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
});
