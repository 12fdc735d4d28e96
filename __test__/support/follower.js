// A second app process for cluster.spec.ts: opens the store given in argv, says "ready", then
// for each line `<userId> <expected>` on stdin waits until getCredential for that user returns
// `<expected>` (a token, or an error code), and prints how long that took in ms.
'use strict';
const { createInterface } = require('node:readline');
const { performance } = require('node:perf_hooks');
const { Authpipe } = require('../..');

const { store, masterKey } = JSON.parse(process.argv[2]);

async function main() {
  const authpipe = new Authpipe({ store, masterKey, healthCheckIntervalMs: 0 });
  await authpipe.ready();
  process.stdout.write('ready\n');
  for await (const line of createInterface({ input: process.stdin })) {
    const [userId, expected] = line.split(' ');
    const ref = { provider: 'attio', tenantId: 'org_follow', userId };
    const started = performance.now();
    for (;;) {
      const seen = await authpipe.getCredential(ref).then(
        (c) => c.credential,
        (e) => e.code,
      );
      if (seen === expected) break;
      await new Promise((resolve) => setImmediate(resolve));
    }
    process.stdout.write(`${Math.round(performance.now() - started)}\n`);
  }
  await authpipe.close();
}

main().catch((e) => {
  process.stdout.write(`fatal ${e?.stack ?? e}\n`);
  process.exit(1);
});
