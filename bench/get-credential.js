// Warm getCredential against its baselines, measured in one run on the same keys:
//   (a) floor:   await of a plain JS Map lookup
//   (b) js-aes:  a JS Map of AES-256-GCM ciphertexts, decrypted with node:crypto per call
//   (c) http:    GET of the token from a keep-alive HTTP server on loopback (a hosted broker minus the internet)
//   authpipe:    await authpipe.getCredential({ provider, tenantId, userId })
// for 40-byte (Attio-like) and 1.2 KB (JWT-like) tokens, 10,000 connections each. Then, in a
// child process: RSS per 100,000 imported connections and the time to open a store holding them.
//
// Run with `npm run bench` (release build). Each in-process variant runs in interleaved rounds
// so drift and GC affect all of them alike; every call is timed on its own with hrtime, whose
// own cost (reported as "timer") is included in every variant equally.
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
const CALLS_PER_ROUND = 20_000;
const HTTP_CALLS = 4_000;

const opaque = () => crypto.randomBytes(30).toString('base64url'); // 40 chars
const jwtLike = () => `eyJhbGciOiJSUzI1NiJ9.${crypto.randomBytes(750).toString('base64url')}.${crypto.randomBytes(130).toString('base64url')}`.slice(0, 1200);

function stats(samples) {
  const sorted = Float64Array.from(samples).sort();
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return { median: at(0.5), p99: at(0.99), n: sorted.length };
}

async function timeCalls(fn, keys, count, offset, out) {
  for (let i = 0; i < count; i++) {
    const k = keys[(offset + i) % keys.length];
    const t0 = process.hrtime.bigint();
    await fn(k);
    out.push(Number(process.hrtime.bigint() - t0));
  }
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
    'authpipe.getCredential': null, // uses refs, below
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

  const samples = Object.fromEntries(Object.keys(variants).map((name) => [name, []]));
  for (let round = 0; round < ROUNDS; round++) {
    const offset = round * CALLS_PER_ROUND;
    await timeCalls(variants['floor: await Map.get'], keys, CALLS_PER_ROUND, offset, samples['floor: await Map.get']);
    await timeCalls(variants['js-aes: Map + node:crypto'], keys, CALLS_PER_ROUND, offset, samples['js-aes: Map + node:crypto']);
    await timeCalls(authpipeCall, indexes, CALLS_PER_ROUND, offset, samples['authpipe.getCredential']);
  }

  const server = await startTokenServer(tokens);
  const httpSamples = [];
  await timeCalls(server.get, keys, 200, 0, []); // warm the connection
  await timeCalls(server.get, keys, HTTP_CALLS, 0, httpSamples);
  if ((await server.get(keys[7])) !== tokens.get(keys[7])) throw new Error('http baseline returned a wrong token');
  await server.close();
  samples['http: keep-alive loopback GET'] = httpSamples;

  const results = Object.fromEntries(Object.entries(samples).map(([name, s]) => [name, stats(s)]));
  const ours = results['authpipe.getCredential'];
  const floor = results['floor: await Map.get'];
  const httpResult = results['http: keep-alive loopback GET'];
  console.log(`\n${label} tokens, ${CONNECTIONS.toLocaleString()} connections (ns per call, hrtime around each await)`);
  console.log('variant'.padEnd(34), 'median'.padStart(10), 'p99'.padStart(10), 'calls'.padStart(9));
  for (const [name, r] of Object.entries(results)) {
    console.log(name.padEnd(34), r.median.toFixed(0).padStart(10), r.p99.toFixed(0).padStart(10), String(r.n).padStart(9));
  }
  const ratioFloor = ours.median / floor.median;
  const ratioHttp = httpResult.median / ours.median;
  console.log(`authpipe / floor (median): ${ratioFloor.toFixed(2)}x   (target <= 2x)   ${ratioFloor <= 2 ? 'PASS' : 'FAIL'}`);
  console.log(`http / authpipe (median):  ${ratioHttp.toFixed(0)}x faster   (target >= 500x)   ${ratioHttp >= 500 ? 'PASS' : 'FAIL'}`);
  return { label, results, ratioFloor, ratioHttp };
}

async function main() {
  if (process.argv[2] === '--memory') return memoryChild(process.argv[3]);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authpipe-bench-'));
  try {
    const authpipe = new Authpipe({ store: path.join(dir, 'bench.db'), masterKey: crypto.randomBytes(32) });
    console.log(`node ${process.version}, ${os.cpus().length} cpus (${os.cpus()[0].model}), timer overhead ${await timerOverhead()} ns`);
    const short = await measureSize('40 B (Attio-like)', opaque, authpipe, 'attio');
    const long = await measureSize('1.2 KB (JWT-like)', jwtLike, authpipe, 'hubspot');
    await authpipe.close();

    const memory = JSON.parse(
      execFileSync(process.execPath, ['--expose-gc', __filename, '--memory', path.join(dir, 'memory.db')], { encoding: 'utf8' }),
    );
    console.log('\n100,000 imported connections (40 B access token + 40 B refresh token each)');
    console.log(`RSS added by importing them:          ${(memory.importRssBytes / 2 ** 20).toFixed(1)} MiB (${Math.round(memory.importRssBytes / 100_000)} B per connection)`);
    console.log(`import time (batches of 1,000):       ${memory.importMs.toFixed(0)} ms`);
    console.log(`open a store holding them (ready()):  ${memory.openMs.toFixed(0)} ms`);
    console.log(`RSS of a process that opened it:      ${(memory.openRssBytes / 2 ** 20).toFixed(1)} MiB above the empty baseline`);
    const ok = [short, long].every((r) => r.ratioFloor <= 2 && r.ratioHttp >= 500);
    console.log(`\ntargets ${ok ? 'met' : 'NOT met'}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function memoryChild(store) {
  const masterKey = crypto.randomBytes(32);
  const settle = () => {
    global.gc();
    return process.memoryUsage().rss;
  };
  const empty = new Authpipe({ store: ':memory:', masterKey });
  await empty.ready();
  await empty.close();
  const baseline = settle();

  let authpipe = new Authpipe({ store, masterKey });
  await authpipe.ready();
  const before = settle();
  const t0 = performance.now();
  for (let batch = 0; batch < 100; batch++) {
    const inputs = [];
    for (let i = 0; i < 1000; i++) {
      const n = batch * 1000 + i;
      inputs.push({ provider: 'attio', tenantId: `tenant_${n % 1000}`, userId: `user_${n}`, accessToken: opaque(), refreshToken: opaque() });
    }
    await authpipe.importConnections(inputs);
  }
  const importMs = performance.now() - t0;
  const importRssBytes = settle() - before;
  await authpipe.close();

  // Opening: the engine loads and indexes every connection (sealed) into its cache.
  const t1 = performance.now();
  authpipe = new Authpipe({ store, masterKey });
  await authpipe.ready();
  const openMs = performance.now() - t1;
  const openRssBytes = settle() - baseline;
  await authpipe.close();
  process.stdout.write(JSON.stringify({ importRssBytes, importMs, openMs, openRssBytes }));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
