/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  testMatch: ['<rootDir>/__test__/**/*.spec.ts'],
  transform: { '^.+\\.ts$': ['ts-jest', { tsconfig: '<rootDir>/__test__/tsconfig.json' }] },
  // Each file gets its own stores; several Jest workers would fight over 2 cores for no gain.
  maxWorkers: 1,
  reporters: ['<rootDir>/__test__/summary-reporter.js', 'default'],
  testTimeout: 30000,
  // Staged example apps and packages (target/example-apps, target/pack) are not this package's modules.
  modulePathIgnorePatterns: ['<rootDir>/target/'],
};
