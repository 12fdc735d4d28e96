// Memory kept by calls on connections that do not exist (node --expose-gc bench/unknown-ids.js):
// RSS growth over N sequential calls on distinct unknown ids, for refreshConnection (which takes
// the connection's single-flight turn) against getCredential (which does not) in the same run.
// Both read the store once per call, so what getCredential grows is the baseline (the
// allocator); refreshConnection growing more would mean the single-flight map keeps entries.
'use strict';
const { Authpipe } = require('..');

const CALLS = Number(process.env.UNKNOWN_IDS_CALLS ?? 100_000);
const WARMUP = 2_000;
const rssMiB = () => process.memoryUsage().rss / 2 ** 20;

async function growth(authpipe, method, prefix) {
  const call = (i) => authpipe[method]({ provider: 'attio', tenantId: `${prefix}_${i}`, userId: `user_${i}` }).catch(() => {});
  for (let i = 0; i < WARMUP; i++) await call(`warm_${i}`);
  global.gc?.();
  const before = rssMiB();
  for (let i = 0; i < CALLS; i++) await call(i);
  global.gc?.();
  return rssMiB() - before;
}

(async () => {
  if (!global.gc) console.warn('run with node --expose-gc for steadier figures');
  const results = {};
  for (const method of ['getCredential', 'refreshConnection']) {
    // A fresh instance each, so neither inherits the other's allocations.
    const authpipe = new Authpipe({ store: ':memory:', masterKey: Buffer.alloc(32, 7).toString('base64') });
    await authpipe.ready();
    results[method] = await growth(authpipe, method, method);
    await authpipe.close();
  }
  const mib = (v) => `${v.toFixed(1)} MiB`;
  console.log(`unknown ids, ${CALLS.toLocaleString('en-US')} calls each: RSS grew ${mib(results.getCredential)} for getCredential (baseline), ${mib(results.refreshConnection)} for refreshConnection`);
  console.log(`refreshConnection / getCredential growth: ${(results.refreshConnection / Math.max(results.getCredential, 0.1)).toFixed(2)}x (about 1x: no per-id state kept)`);
})();
