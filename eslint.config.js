import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['node_modules/**', '.aether/**', 'bench/results/**', 'coverage/**', 'test/fixtures/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: { process: 'readonly', console: 'readonly', Buffer: 'readonly', setTimeout: 'readonly', clearTimeout: 'readonly', setInterval: 'readonly', clearInterval: 'readonly', setImmediate: 'readonly', URL: 'readonly', AbortController: 'readonly', AbortSignal: 'readonly', structuredClone: 'readonly', TextEncoder: 'readonly', TextDecoder: 'readonly', fetch: 'readonly', performance: 'readonly', queueMicrotask: 'readonly' } },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/consistent-type-imports': 'error',
      'no-restricted-imports': ['error', { patterns: [{ group: ['**/sqlite.ts', '**/etcd.ts', '**/redis.ts', '**/s3.ts', '**/memory.ts', '**/fs.ts', '**/process.ts', '**/runtime/process/**', '**/runtime/fake/**', '**/runtime/qemu/**', '**/runtime/firecracker/**'], message: 'Concrete drivers are chosen only in src/bin/ (import the component index instead).' }] }],
    },
  },
  { files: ['src/bin/**', '**/*.test.ts', 'test/**', 'bench/**', 'src/*/index.ts', 'src/runtime/*/**'], rules: { 'no-restricted-imports': 'off' } },
);
