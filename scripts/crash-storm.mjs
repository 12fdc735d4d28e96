#!/usr/bin/env node
// The full crash storm (__test__/crash-storm.spec.ts, __test__/support/storm.ts): kill -9 of two
// app processes at random moments during refresh storms, many times per store, one line per
// round as it goes and the figures at the end.
//
//   node scripts/crash-storm.mjs --store sqlite|postgres|both --kills 100 [--seed N] [--connections 100]
//   npm run storm -- --store postgres --kills 100
//
// Needs the built addon (npm run build:debug) and, for postgres, the test database (README).
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    store: { type: 'string', default: 'both' },
    kills: { type: 'string', default: '100' },
    seed: { type: 'string' },
    connections: { type: 'string', default: '100' },
  },
});
if (!['sqlite', 'postgres', 'both'].includes(values.store)) {
  console.error('--store is sqlite, postgres or both');
  process.exit(2);
}
const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const jest = createRequire(import.meta.url).resolve('jest/bin/jest');
const env = {
  ...process.env,
  STORM_STORES: values.store === 'both' ? 'sqlite,postgres' : values.store,
  STORM_KILLS: values.kills,
  STORM_CONNECTIONS: values.connections,
  ...(values.seed === undefined ? {} : { STORM_SEED: values.seed }),
};
const run = spawnSync(process.execPath, [jest, '__test__/crash-storm.spec.ts', '--runInBand', '-t', 'crash storm on'], { cwd: root, env, stdio: 'inherit' });
process.exit(run.status ?? 1);
