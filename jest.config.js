/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  // tsconfig.json (found from the root) with isolatedModules on top: each file is transpiled on its own, fast
  // (tsc type-checks the whole project). Set here rather than as ts-jest's deprecated option of the same name,
  // which warns on every run.
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: { isolatedModules: true } }] },
  // The local stack (Temporal, MinIO) is started once per run and shared by the e2e suites.
  globalSetup: '<rootDir>/test/global-setup.ts',
  globalTeardown: '<rootDir>/test/global-teardown.ts',
  testTimeout: 120000,
  // The run ends when the tests do. Teardowns stop what the tests started (workers, servers, the stack), but a
  // handle something still leaks (a native worker retrying a dead server) must not keep CI waiting until its
  // time limit with every result already in: that happened once, and the run counted as never finished.
  forceExit: true,
};
