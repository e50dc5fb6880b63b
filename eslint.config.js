// ESLint flat config (the project is CommonJS). TypeScript is linted type-aware, so that an un-awaited
// promise (a step that silently runs on after its caller gave up, or a rejection nobody sees) is an error.
const { builtinModules } = require('node:module');
const js = require('@eslint/js');
const tseslint = require('typescript-eslint');

// Every Node built-in, bare and node:-prefixed: workflow code runs in Temporal's deterministic sandbox, where
// I/O, clocks and randomness come only from the Temporal APIs (the bundler rejects most of these at runtime,
// lint says so before a worker starts).
const nodeBuiltins = builtinModules.filter((m) => !m.startsWith('_'));

module.exports = tseslint.config(
  { ignores: ['dist/', 'node_modules/', '.kybernate/', '.device/', '.gpu-debs/'] },
  js.configs.recommended,
  {
    files: ['**/*.ts'],
    extends: [tseslint.configs.recommended],
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: __dirname },
    },
    rules: {
      // The id and input checks match control characters on purpose: that is what they reject.
      'no-control-regex': 'off',
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-explicit-any': 'error',
      // `_`-prefixed names are deliberately unused (a destructured field left out, a required parameter).
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' },
      ],
    },
  },
  {
    files: ['workflows/**/*.ts'],
    rules: {
      '@typescript-eslint/no-restricted-imports': [
        'error',
        {
          paths: nodeBuiltins.map((name) => ({
            name,
            message: 'workflows/ runs in the Temporal sandbox: no Node built-ins (use @temporalio/workflow).',
          })),
          patterns: [
            {
              group: ['node:*'],
              message: 'workflows/ runs in the Temporal sandbox: no Node built-ins (use @temporalio/workflow).',
            },
            {
              group: ['**/activities', '**/activities/**'],
              allowTypeImports: true,
              message:
                'workflows/ may import only types from activities/ (`import type`); call activities through proxyActivities.',
            },
          ],
        },
      ],
    },
  },
  {
    files: ['**/*.js'],
    languageOptions: { sourceType: 'commonjs', globals: { __dirname: 'readonly' } },
  },
);
