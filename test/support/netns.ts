/**
 * The network rule of the tests: veth pairs and private addresses only inside a network namespace
 * the test run made itself. `npm run test:integration` (and `npm run bench`) run under
 * scripts/in-netns, which makes one and sets AETHER_TEST_NETNS=1. A test file run directly (not
 * through it) falls back to the forwarder network, here and in every `aether` it starts (the
 * variable below is inherited), so it never adds links to the host's namespace.
 */
export const inTestNetns = process.env['AETHER_TEST_NETNS'] === '1';

/** What tests pass as the process runtime's `network`. */
export const sandboxNetwork: 'auto' | 'forwarder' = inTestNetns ? 'auto' : 'forwarder';

if (!inTestNetns) process.env['AETHER_SANDBOX_NETWORK'] = 'forwarder';
