// Warm getCredential against its baselines, measured in one run on the same keys:
//   (a) floor:   await of a plain JS Map lookup
//   (b) js-aes:  a JS Map of AES-256-GCM ciphertexts, decrypted with node:crypto per call
//   (c) http:    GET of the token from a keep-alive HTTP server on loopback (a hosted broker minus the internet)
//   authpipe:    await authpipe.getCredential({ provider, tenantId, userId })
// for 40-byte (Attio-like) and 1.2 KB (JWT-like) tokens, 10,000 connections each. Then, in a
// child process: RSS per 100,000 imported connections and the time to open a store holding them.
//
// Run with `npm run bench` (release build, needs --expose-gc). The in-process variants run in
// interleaved rounds, each block after a full GC and in rotating order, so drift and garbage
// affect all of them alike; every call is timed on its own with hrtime, whose own cost
// (reported as "timer overhead") is included in every variant equally.
'use strict';
const { Authpipe } = require('..');
const crypto = require('node:crypto');
const http = require('node:http');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');

const CONNECTIONS = 10_000;
const ROUNDS = 10;
const CALLS_PER_ROUND = 50_000; // in batches of BATCH
const SINGLE_CALLS_PER_ROUND = 10_000; // timed one by one, for the single-call p99
const BATCH = 100;
const HTTP_CALLS = 4_000;

const opaque = () => crypto.randomBytes(30).toString('base64url'); // 40 chars
const jwtLike = () => `eyJhbGciOiJSUzI1NiJ9.${crypto.randomBytes(750).toString('base64url')}.${crypto.randomBytes(130).toString('base64url')}`.slice(0, 1200);

function stats(samples) {
  const sorted = Float64Array.from(samples).sort();
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return { median: at(0.5), p99: at(0.99), n: sorted.length };
}

// The timing loop, compiled afresh for each variant so that its call site stays monomorphic,
// as an application's call site would be (one shared loop would be megamorphic and penalise
// the cheapest variants most). It times `batch` sequential awaited calls at a time and records
// the time per call: batches of 100 amortise the timer (~40 ns) to under 1 ns per call, and
// batches of 1 give single-call tails (timer included).
const LOOP = `return (async () => {
  for (let done = 0; done < count; done += batch) {
    const t0 = process.hrtime.bigint();
    for (let j = 0; j < batch; j++) await fn(keys[(offset + done + j) % keys.length]);
    out.push(Number(process.hrtime.bigint() - t0) / batch);
  }
})();`;
function timer() {
  return new Function('fn', 'keys', 'count', 'offset', 'out', 'batch', LOOP);
}

async function timerOverhead() {
  const out = [];
  for (let i = 0; i < 100_000; i++) {
    const t0 = process.hrtime.bigint();
    out.push(Number(process.hrtime.bigint() - t0));
  }
  return stats(out).median;
}

function sealJs(key, token) {
  const iv = crypto.randomBytes(12);
  const cipher = crypto.createCipheriv('aes-256-gcm', key, iv);
  const ct = Buffer.concat([cipher.update(token, 'utf8'), cipher.final()]);
  return { iv, ct, tag: cipher.getAuthTag() };
}

function openJs(key, sealed) {
  const decipher = crypto.createDecipheriv('aes-256-gcm', key, sealed.iv);
  decipher.setAuthTag(sealed.tag);
  return Buffer.concat([decipher.update(sealed.ct), decipher.final()]).toString('utf8');
}

async function startTokenServer(tokens) {
  const server = http.createServer((req, res) => {
    const token = tokens.get(decodeURIComponent(req.url.slice(1)));
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ credential: token }));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const port = server.address().port;
  const get = (key) =>
    new Promise((resolve, reject) => {
      http
        .get({ host: '127.0.0.1', port, path: `/${encodeURIComponent(key)}`, agent }, (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (c) => (body += c));
          res.on('end', () => resolve(JSON.parse(body).credential));
        })
        .on('error', reject);
    });
  return { get, close: () => (agent.destroy(), new Promise((r) => server.close(r))) };
}

async function measureSize(label, makeToken, authpipe, provider) {
  const refs = [];
  const tokens = new Map();
  const inputs = [];
  for (let i = 0; i < CONNECTIONS; i++) {
    const ref = { provider, tenantId: `tenant_${i % 500}`, userId: `user_${i}` };
    const token = makeToken();
    refs.push(ref);
    tokens.set(`${ref.provider}:${ref.tenantId}:${ref.userId}`, token);
    inputs.push({ ...ref, accessToken: token, expiresAt: Date.now() + 24 * 3600_000 });
  }
  for (let i = 0; i < inputs.length; i += 1000) await authpipe.importConnections(inputs.slice(i, i + 1000));

  const keys = [...tokens.keys()];
  const jsKey = crypto.randomBytes(32);
  const sealed = new Map(keys.map((k) => [k, sealJs(jsKey, tokens.get(k))]));

  const variants = {
    'floor: await Map.get': (k) => tokens.get(k),
    'js-aes: Map + node:crypto': (k) => openJs(jsKey, sealed.get(k)),
  };
  const authpipeCall = (i) => authpipe.getCredential(refs[i]);
  const indexes = refs.map((_, i) => i);

  // Correctness first: every variant returns the same token for every key.
  for (let i = 0; i < CONNECTIONS; i++) {
    const expected = tokens.get(keys[i]);
    if ((await authpipeCall(i)).credential !== expected || openJs(jsKey, sealed.get(keys[i])) !== expected) {
      throw new Error(`wrong token for ${keys[i]}`);
    }
  }

  // Interleaved rounds, each variant's block starting from a collected heap and the order
  // rotating, so no variant pays for the garbage another one left behind.
  const blocks = [
    ['floor: await Map.get', variants['floor: await Map.get'], keys, timer()],
    ['js-aes: Map + node:crypto', variants['js-aes: Map + node:crypto'], keys, timer()],
    ['authpipe.getCredential', authpipeCall, indexes, timer()],
  ];
  const samples = Object.fromEntries(blocks.map(([name]) => [name, { batched: [], single: [] }]));
  for (let round = 0; round < ROUNDS; round++) {
    for (let b = 0; b < blocks.length; b++) {
      const [name, fn, args, loop] = blocks[(round + b) % blocks.length];
      global.gc();
      await loop(fn, args, CALLS_PER_ROUND, round * CALLS_PER_ROUND, samples[name].batched, BATCH);
      await loop(fn, args, SINGLE_CALLS_PER_ROUND, round * CALLS_PER_ROUND, samples[name].single, 1);
    }
  }

  const server = await startTokenServer(tokens);
  const httpLoop = timer();
  const httpSamples = { batched: [], single: [] };
  await httpLoop(server.get, keys, 200, 0, [], 1); // warm the connection
  await httpLoop(server.get, keys, HTTP_CALLS, 0, httpSamples.batched, BATCH);
  await httpLoop(server.get, keys, HTTP_CALLS / 4, 0, httpSamples.single, 1);
  if ((await server.get(keys[7])) !== tokens.get(keys[7])) throw new Error('http baseline returned a wrong token');
  await server.close();
  samples['http: keep-alive loopback GET'] = httpSamples;

  const results = Object.fromEntries(
    Object.entries(samples).map(([name, s]) => [name, { ...stats(s.batched), singleP99: stats(s.single).p99, calls: s.batched.length * BATCH }]),
  );
  const ours = results['authpipe.getCredential'];
  const floor = results['floor: await Map.get'];
  const httpResult = results['http: keep-alive loopback GET'];
  console.log(`\n${label} tokens, ${CONNECTIONS.toLocaleString()} connections: ns per awaited call`);
  console.log(`(median and p99 over batches of ${BATCH} sequential calls; last column: p99 of single calls timed alone, timer included)`);
  console.log('variant'.padEnd(34), 'median'.padStart(9), 'p99'.padStart(9), 'single p99'.padStart(11), 'calls'.padStart(10));
  for (const [name, r] of Object.entries(results)) {
    const cols = [r.median.toFixed(0), r.p99.toFixed(0), r.singleP99.toFixed(0), String(r.calls)];
    console.log(name.padEnd(34), cols[0].padStart(9), cols[1].padStart(9), cols[2].padStart(11), cols[3].padStart(10));
  }
  const ratioFloor = ours.median / floor.median;
  const ratioHttp = httpResult.median / ours.median;
  console.log(`authpipe / floor (median): ${ratioFloor.toFixed(2)}x   (target <= 2x)   ${ratioFloor <= 2 ? 'PASS' : 'FAIL'}`);
  console.log(`http / authpipe (median):  ${ratioHttp.toFixed(0)}x faster   (target >= 500x)   ${ratioHttp >= 500 ? 'PASS' : 'FAIL'}`);
  return { label, results, ratioFloor, ratioHttp };
}

async function main() {
  if (process.argv[2] === '--import') return importChild(process.argv[3]);
  if (process.argv[2] === '--open') return openChild(process.argv[3]);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authpipe-bench-'));
  try {
    const authpipe = new Authpipe({ store: path.join(dir, 'bench.db'), masterKey: crypto.randomBytes(32) });
    console.log(`node ${process.version}, ${os.cpus().length} cpus (${os.cpus()[0].model}), timer overhead ${await timerOverhead()} ns`);
    const short = await measureSize('40 B (Attio-like)', opaque, authpipe, 'attio');
    const long = await measureSize('1.2 KB (JWT-like)', jwtLike, authpipe, 'hubspot');
    await authpipe.close();

    const big = path.join(dir, 'big.db');
    const env = { BENCH_KEY: crypto.randomBytes(32).toString('base64') };
    const run = (mode) =>
      JSON.parse(execFileSync(process.execPath, ['--expose-gc', __filename, mode, big], { encoding: 'utf8', env: { ...process.env, ...env } }));
    const filled = run('--import');
    const opened = run('--open');
    console.log('\n100,000 connections (40 B access token, 40 B refresh token, an expiry each), SQLite file');
    console.log(`import, 100 batches of 1,000:        ${filled.importMs.toFixed(0)} ms`);
    console.log(`open the store (ready()), new process: ${opened.openMs.toFixed(0)} ms  (${opened.cachedConnections} connections cached)`);
    console.log(`RSS that process holds for them:      ${(opened.rssBytes / 2 ** 20).toFixed(1)} MiB (${Math.round(opened.rssBytes / 100_000)} B per connection)`);
    const ok = [short, long].every((r) => r.ratioFloor <= 2 && r.ratioHttp >= 500);
    console.log(`\ntargets ${ok ? 'met' : 'NOT met'}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** `--import <store>`: fills the store with 100,000 connections; prints timings. */
async function importChild(store) {
  const authpipe = new Authpipe({ store, masterKey: Buffer.from(process.env.BENCH_KEY, 'base64') });
  await authpipe.ready();
  const t0 = performance.now();
  for (let batch = 0; batch < 100; batch++) {
    const inputs = [];
    for (let i = 0; i < 1000; i++) {
      const n = batch * 1000 + i;
      const expiresAt = Date.now() + 3600_000 + (n % 3600) * 1000;
      inputs.push({ provider: 'attio', tenantId: `tenant_${n % 1000}`, userId: `user_${n}`, accessToken: opaque(), refreshToken: opaque(), expiresAt });
    }
    await authpipe.importConnections(inputs);
  }
  const importMs = performance.now() - t0;
  await authpipe.close();
  process.stdout.write(JSON.stringify({ importMs }));
}

/** `--open <store>`: a fresh process opens the filled store; prints time and RSS it added. */
async function openChild(store) {
  const masterKey = Buffer.from(process.env.BENCH_KEY, 'base64');
  const settle = () => (global.gc(), process.memoryUsage().rss);
  const warmup = new Authpipe({ store: ':memory:', masterKey }); // load the addon, start its runtime
  await warmup.ready();
  const baseline = settle();
  const t0 = performance.now();
  const authpipe = new Authpipe({ store, masterKey });
  await authpipe.ready();
  const openMs = performance.now() - t0;
  const rssBytes = settle() - baseline;
  const { cachedConnections } = await authpipe.stats();
  await authpipe.close();
  await warmup.close();
  process.stdout.write(JSON.stringify({ openMs, rssBytes, cachedConnections }));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
