// One app instance of a cluster test (cluster.spec.ts), in its own process: opens Authpipe on
// the shared store, says {"ready":...} on stdout, and on "go <deadline>" from stdin calls
// getCredential over every connection in a loop until the deadline. Then it closes, and reports
// one JSON line (a "stop" line ends the loop before the deadline): calls, errors by code, waits, tokens it served first-hand or refreshed itself,
// refresh problems (also those of refreshes that finished during close()). Each
// process runs CALLERS loops at once. It checks
// every token it returns against the clock, and introspects its share of new tokens (one in
// 2 x workers of them, so one in eight across four workers) with the authorization server the
// moment it first returns them.
//
// Before each call a caller pauses CALL_PAUSE_MS, as an app does something between two: sixteen
// callers spinning flat out on two cores would starve the authorization server and the database
// until refreshes fall behind, which tests the machine, not the coordination.
'use strict';
const { createHash } = require('node:crypto');
const { createInterface } = require('node:readline');
const { performance } = require('node:perf_hooks');
const { Authpipe } = require('../..');

const config = JSON.parse(process.argv[2]);
const { index, workers, refs } = config;
const CALL_PAUSE_MS = 1;
const CALLERS = 4;
const basic = `Basic ${Buffer.from(`${config.provider.clientId}:${config.provider.clientSecret}`).toString('base64')}`;

/**
 * Whether `token` was valid when it was returned at `returnedAt`: the server's introspection says
 * so, or, when that came too late (the token had expired in between), the server's record of the
 * token does (its expiry after `returnedAt`, its grant never revoked). `verdict` is 'active',
 * 'expired-since', 'invalid' or 'unknown' (no record); the record comes along as evidence.
 */
async function validAt(token, returnedAt) {
  const res = await fetch(`${config.provider.issuer}/token/introspection`, {
    method: 'POST',
    headers: { authorization: basic, 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token }),
  });
  if ((await res.json()).active === true) return { verdict: 'active' };
  const record = await fetch(`${config.provider.issuer}/__token?${new URLSearchParams({ token })}`);
  if (!record.ok) return { verdict: 'unknown' };
  const { exp, grantRevoked } = await record.json();
  const verdict = !grantRevoked && exp * 1000 > returnedAt ? 'expired-since' : 'invalid';
  return { verdict, serverExpiresAt: exp * 1000, grantRevoked };
}

/** Which worker introspects a token: every other token by exactly one of them. */
function introspector(token) {
  return createHash('sha256').update(token).digest().readUInt32BE(0) % (2 * workers);
}

async function main() {
  const authpipe = new Authpipe({
    store: config.store,
    masterKey: config.masterKey,
    httpTimeoutMs: config.httpTimeoutMs,
    healthCheckIntervalMs: config.healthCheckIntervalMs,
    providers: { oidc: config.provider },
  });
  await authpipe.ready();
  // Tokens this process refreshed itself (connection|expiresAt -> when it committed them, by the
  // engine's clock reading just before the commit), and refresh problems.
  const own = {};
  const problems = [];
  authpipe.on('connection.refreshed', (e) => (own[`${e.userId}|${e.expiresAt.getTime()}`] = e.at.getTime()));
  authpipe.on('connection.refresh_failed', (e) => problems.push({ type: e.type, userId: e.userId, code: e.error?.code, message: e.error?.message }));
  authpipe.on('connection.revoked', (e) => problems.push({ type: e.type, userId: e.userId, code: e.error?.code, message: e.error?.message }));

  const lines = createInterface({ input: process.stdin });
  process.stdout.write(`${JSON.stringify({ ready: true, pid: process.pid })}\n`);
  const go = await new Promise((resolve) => lines.once('line', resolve));
  let deadline = Number(go.split(' ')[1]);
  lines.on('line', (line) => line === 'stop' && (deadline = 0));

  const current = new Map(); // userId -> the token last returned
  const firstServed = {}; // `${userId}|${expiresAt}` -> when this process first returned it
  const errors = {};
  const erroredConnections = new Set();
  const waits = []; // calls that took over 100 ms: { userId, ms, at }
  const inactive = []; // tokens the server did not accept: { userId, verdict, returnedAt, ... }
  let calls = 0;
  let expiredReturns = 0;
  let introspected = 0;
  let expiredSinceReturn = 0;
  let i = index * Math.floor(refs.length / workers);
  // Several callers at once, as an app serves several requests: one caller waiting on a
  // connection does not stop the others.
  const caller = async () => {
    while (Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, CALL_PAUSE_MS));
      const ref = refs[i++ % refs.length];
      const started = performance.now();
      let credential;
      let failure;
      try {
        credential = await authpipe.getCredential(ref);
      } catch (e) {
        failure = e;
      }
      const now = Date.now();
      const took = performance.now() - started;
      if (took > 100) waits.push({ userId: ref.userId, ms: Math.round(took), at: now });
      if (failure) {
        errors[failure.code ?? 'UNKNOWN'] = (errors[failure.code ?? 'UNKNOWN'] ?? 0) + 1;
        erroredConnections.add(ref.userId);
        continue;
      }
      calls++;
      const expiresAt = credential.expiresAt.getTime();
      if (expiresAt <= now) expiredReturns++;
      if (current.get(ref.userId) !== credential.credential) {
        current.set(ref.userId, credential.credential);
        const token = `${ref.userId}|${expiresAt}`;
        firstServed[token] = Math.min(firstServed[token] ?? now, now);
        if (introspector(credential.credential) === index) {
          introspected++;
          const { verdict, ...evidence } = await validAt(credential.credential, now);
          if (verdict === 'expired-since') expiredSinceReturn++;
          else if (verdict !== 'active') inactive.push({ userId: ref.userId, verdict, returnedAt: now, expiresAt, ...evidence });
        }
      }
    }
  };
  await Promise.all(Array.from({ length: CALLERS }, caller));
  const endedAt = Date.now();
  const stats = await authpipe.stats();
  const metrics = await authpipe.metrics();
  // Refreshes still under way finish in close(), and their events (problems too) arrive before
  // it resolves: the report covers them.
  await authpipe.close();
  lines.close();
  process.stdout.write(
    `${JSON.stringify({
      index,
      calls,
      errors,
      erroredConnections: [...erroredConnections],
      expiredReturns,
      introspected,
      expiredSinceReturn,
      inactive,
      waits,
      problems,
      own,
      firstServed,
      stats,
      metrics,
      endedAt,
      closedAt: Date.now(),
    })}\n`,
  );
}

main().catch((e) => {
  process.stdout.write(`${JSON.stringify({ fatal: String(e?.stack ?? e) })}\n`);
  process.exit(1);
});
