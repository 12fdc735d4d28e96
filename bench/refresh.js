// The refresh scheduler under load (npm run bench, release build):
//   1. RSS and idle CPU over 10 s of a process holding 100,000 refreshable connections;
//   2. time to drain 10,000 refreshes that come due together, against the HubSpot sandbox (in
//      its own process, like a remote provider) with the default per-provider concurrency (8);
//   3. warm getCredential latency while that drain runs, as a ratio to the plain-Map floor
//      measured in the same loop.
'use strict';
const { Authpipe } = require('..');
const { execFileSync, spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');

const LOADED = 100_000;
const DRAIN = 10_000;
const WARM = 10_000;
const BATCH = 100;
const opaque = () => crypto.randomBytes(30).toString('base64url');

function stats(samples) {
  const sorted = Float64Array.from(samples).sort();
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return { median: at(0.5), p99: at(0.99) };
}

/** The HubSpot sandbox in a child process; resolves with its provider config and minted tokens. */
async function startProvider(mint) {
  const child = spawn(process.execPath, [__filename, '--sandbox', String(mint)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const [line] = await require('node:events').once(readline.createInterface({ input: child.stdout }), 'line');
  return { ...JSON.parse(line), stop: () => child.stdin.end() };
}

async function sandboxChild(mint) {
  const { createSandbox } = require('../dist/testing.js');
  const sandbox = await createSandbox({ provider: 'hubspot', accessTokenTtl: 2 });
  const config = sandbox.providerConfig({ redirectUri: 'https://app.example/callback' });
  const tokens = sandbox.mintTokens(mint, { expiresIn: 2 });
  process.stdout.write(`${JSON.stringify({ config, tokens })}\n`);
  process.stdin.resume();
  process.stdin.on('end', async () => {
    await sandbox.close();
    process.exit(0);
  });
}

/** Fills `store` with LOADED refreshable connections (expiring in 1-2 hours: not due during the idle window). */
async function fillChild(store, key) {
  const authpipe = new Authpipe({ store, masterKey: key });
  const now = Date.now();
  for (let batch = 0; batch < LOADED / 1000; batch++) {
    const inputs = [];
    for (let i = 0; i < 1000; i++) {
      const n = batch * 1000 + i;
      inputs.push({ provider: 'hubspot', tenantId: `t${n % 1000}`, userId: `u${n}`, accessToken: opaque(), refreshToken: opaque(), expiresAt: now + 3_600_000 + (n % 3600) * 1000 });
    }
    await authpipe.importConnections(inputs);
  }
  await authpipe.close();
}

/** Opens the filled store in a fresh process; reports its RSS and its CPU over 10 idle seconds. */
async function idleChild(store, key) {
  const settle = () => (global.gc(), process.memoryUsage().rss);
  const warmup = new Authpipe({ store: ':memory:', masterKey: key });
  await warmup.ready();
  const baseline = settle();
  const provider = await startProvider(0);
  const authpipe = new Authpipe({ store, masterKey: key, healthCheckIntervalMs: 0, providers: { hubspot: provider.config } });
  await authpipe.ready();
  const rss = settle() - baseline;
  await new Promise((resolve) => setTimeout(resolve, 2_000)); // let the scheduler take in its 200,000 jobs
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await new Promise((resolve) => setTimeout(resolve, 10_000));
  const cpu = process.cpuUsage(cpu0);
  const wallMs = performance.now() - t0;
  const { cachedConnections } = await authpipe.stats();
  await authpipe.close();
  await warmup.close();
  provider.stop();
  process.stdout.write(JSON.stringify({ rss, cpuMs: (cpu.user + cpu.system) / 1000, wallMs, cachedConnections }));
}

async function drain() {
  const provider = await startProvider(DRAIN);
  const authpipe = new Authpipe({ store: ':memory:', masterKey: crypto.randomBytes(32), healthCheckIntervalMs: 0, providers: { hubspot: provider.config } });
  await authpipe.ready();

  // Warm connections (no expiry) and the floor's Map, on the same keys.
  const refs = [];
  const floor = new Map();
  const keys = [];
  const warm = [];
  for (let i = 0; i < WARM; i++) {
    const ref = { provider: 'attio', tenantId: `w${i % 500}`, userId: `w${i}` };
    const token = opaque();
    refs.push(ref);
    keys.push(`attio:${ref.tenantId}:${ref.userId}`);
    floor.set(keys[i], token);
    warm.push({ ...ref, accessToken: token });
  }
  for (let i = 0; i < WARM; i += 1000) await authpipe.importConnections(warm.slice(i, i + 1000));
  for (const ref of refs) await authpipe.getCredential(ref);

  // 10,000 connections whose 2-second tokens all come due within the same 100 ms.
  let refreshed = 0;
  let failed = 0;
  authpipe.on('connection.refreshed', () => refreshed++);
  authpipe.on('connection.refresh_failed', () => failed++);
  const due = provider.tokens.map((t, i) => ({ provider: 'hubspot', tenantId: `d${i % 100}`, userId: `d${i}`, accessToken: t.accessToken, refreshToken: t.refreshToken, expiresAt: Date.now() + 2000 }));
  await authpipe.importConnections(due); // refresh due 0.9-1.0 s from now
  const importedAt = performance.now();

  const loops = {
    floor: new Function('fn', 'keys', 'out', 'batch', `return (async () => { const t0 = process.hrtime.bigint(); for (let j = 0; j < batch; j++) await fn(keys[(Math.random() * keys.length) | 0]); out.push(Number(process.hrtime.bigint() - t0) / batch); })();`),
    authpipe: new Function('fn', 'keys', 'out', 'batch', `return (async () => { const t0 = process.hrtime.bigint(); for (let j = 0; j < batch; j++) await fn(keys[(Math.random() * keys.length) | 0]); out.push(Number(process.hrtime.bigint() - t0) / batch); })();`),
  };
  const samples = { floor: [], authpipe: [] };
  let firstRefreshAt = null;
  let doneAt = null;
  while (doneAt === null && performance.now() - importedAt < 120_000) {
    await loops.floor((k) => floor.get(k), keys, samples.floor, BATCH);
    await loops.authpipe((r) => authpipe.getCredential(r), refs, samples.authpipe, BATCH);
    if (firstRefreshAt === null && refreshed > 0) firstRefreshAt = performance.now();
    if (refreshed + failed >= DRAIN) doneAt = performance.now();
    await new Promise((resolve) => setImmediate(resolve)); // let events and I/O in
  }
  const result = {
    drainMs: doneAt - firstRefreshAt,
    refreshed,
    failed,
    floor: stats(samples.floor),
    authpipe: stats(samples.authpipe),
    batches: samples.floor.length,
  };
  await authpipe.close();
  provider.stop();
  return result;
}

async function main() {
  const [mode, a, b] = process.argv.slice(2);
  if (mode === '--sandbox') return sandboxChild(Number(a));
  if (mode === '--fill') return fillChild(a, Buffer.from(b, 'base64'));
  if (mode === '--idle') return idleChild(a, Buffer.from(b, 'base64'));

  console.log(`node ${process.version}, ${os.cpus().length} cpus (${os.cpus()[0].model})`);
  const d = await drain();
  console.log(`\ndrain: ${DRAIN.toLocaleString()} refreshes due together, HubSpot sandbox in another process, default concurrency (8)`);
  console.log(`  drained in ${d.drainMs.toFixed(0)} ms (${((DRAIN / d.drainMs) * 1000).toFixed(0)} refreshes/s), ${d.failed} failures`);
  console.log(`  warm getCredential during the drain (ns per awaited call, medians over ${d.batches} batches of ${BATCH}):`);
  console.log(`    floor await Map.get ${d.floor.median.toFixed(0)} (p99 ${d.floor.p99.toFixed(0)}), getCredential ${d.authpipe.median.toFixed(0)} (p99 ${d.authpipe.p99.toFixed(0)})`);
  console.log(`    ratio to the floor: ${(d.authpipe.median / d.floor.median).toFixed(2)}x (target <= 2x, as at rest)`);

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authpipe-bench-refresh-'));
  try {
    const store = path.join(dir, 'loaded.db');
    const key = crypto.randomBytes(32).toString('base64');
    execFileSync(process.execPath, [__filename, '--fill', store, key], { stdio: 'inherit' });
    const idle = JSON.parse(execFileSync(process.execPath, ['--expose-gc', __filename, '--idle', store, key], { encoding: 'utf8' }));
    console.log(`\n${idle.cachedConnections.toLocaleString()} refreshable connections loaded (scheduled: memo deadline + refresh each; probes off)`);
    console.log(`  RSS held for them: ${(idle.rss / 2 ** 20).toFixed(1)} MiB (${Math.round(idle.rss / LOADED)} B per connection)`);
    console.log(`  idle CPU over ${(idle.wallMs / 1000).toFixed(1)} s: ${idle.cpuMs.toFixed(0)} ms (${((idle.cpuMs / idle.wallMs) * 100).toFixed(2)}% of one core)`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
