// Many app instances on one store: four Node processes calling getCredential in a loop on 200
// connections of a strict rotating authorization server (oidc-provider: 2-second access tokens,
// refresh-token rotation with reuse detection, which revokes the whole grant on any reuse).
// On PostgreSQL and on one SQLite file; then a kill -9 of one process, and a PostgreSQL restart,
// in the middle of a run. CLUSTER_SECONDS (default 60) sets the length of the full runs; the
// kill and restart runs take half as long.
import { execFile, execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { Authpipe } from '..';
import { Cluster, connectUsers, metricSum, refreshLeasesHeldBy, summarise, type WorkerReport } from './support/cluster';
import { startOidcProvider, type OidcProvider } from './support/oidc';
import { newKey, postgresStore, psql, tempDir } from './helpers';

const SECONDS = Number(process.env.CLUSTER_SECONDS ?? 60);
const WORKERS = 4;
const CONNECTIONS = 200;
const TOKEN_TTL_S = 2;
const redirectUri = 'http://127.0.0.1:9/authpipe/callback/oidc';

let oidc: OidcProvider;
const dir = tempDir();

beforeAll(async () => {
  oidc = await startOidcProvider({ redirectUris: [redirectUri], accessTokenTtl: TOKEN_TTL_S });
});

afterAll(async () => {
  await oidc.close();
});

type Ref = { provider: string; tenantId: string; userId: string };

/**
 * A fresh instance reads every connection back: all there, each serving a token the server
 * accepts. A connection that does not comes with its stored state and the server's refusals, as
 * evidence of when and how it was lost.
 */
async function everyConnectionServes(store: string, masterKey: string, server: OidcProvider, refs: Ref[], lost: Set<string>) {
  const authpipe = new Authpipe({ store, masterKey, healthCheckIntervalMs: 0, providers: { oidc: server.providerConfig(redirectUri) } });
  try {
    const failed: Array<Record<string, unknown>> = [];
    for (const ref of refs) {
      if (lost.has(ref.userId)) continue;
      try {
        const { credential } = await authpipe.getCredential(ref);
        if (!(await server.introspect(credential)).active) failed.push({ userId: ref.userId, failure: 'inactive' });
      } catch (e) {
        const c = await authpipe.getConnection(ref);
        const when = (d: Date | null) => d?.getTime() ?? null;
        failed.push({ userId: ref.userId, failure: (e as { code?: string }).code, status: c.status, lastError: c.lastError, updatedAt: when(c.updatedAt), lastRefreshAt: when(c.lastRefreshAt), lastCheckAt: when(c.lastCheckAt), expiresAt: when(c.expiresAt) });
      }
    }
    if (failed.length > 0) failed.push({ serverRefusals: await server.refusals() });
    expect(failed).toEqual([]);
    const { connections } = await authpipe.listConnections({ provider: 'oidc', limit: 1000 });
    expect(connections).toHaveLength(refs.length);
  } finally {
    await authpipe.close();
  }
}

describe.each(['sqlite', 'postgres'] as const)('two processes on one %s store', (kind) => {
  test('a replacement and a deletion in one process are served by the other, which had the old one cached', async () => {
    const store = kind === 'sqlite' ? join(dir, 'follow.db') : postgresStore();
    const masterKey = newKey();
    const writer = new Authpipe({ store, masterKey, healthCheckIntervalMs: 0 });
    const follower = spawn(process.execPath, [join(__dirname, 'support', 'follower.js'), JSON.stringify({ store, masterKey })], { stdio: ['pipe', 'pipe', 'inherit'] });
    const lines = createInterface({ input: follower.stdout! });
    const nextLine = async () => ((await once(lines, 'line')) as [string])[0];
    /** How long the follower took to see `expected` for u1 (ms). */
    const followerSees = async (expected: string) => {
      follower.stdin!.write(`u1 ${expected}\n`);
      const line = await nextLine();
      expect(line).toMatch(/^\d+$/);
      return Number(line);
    };
    try {
      await writer.ready();
      expect(await nextLine()).toBe('ready');
      const ref = { provider: 'attio', tenantId: 'org_follow', userId: 'u1' };
      await writer.importConnection({ ...ref, accessToken: 'first-token' });
      await followerSees('first-token'); // now in the follower's cache and memo
      await writer.importConnection({ ...ref, accessToken: 'second-token' });
      const replaced = await followerSees('second-token');
      await writer.deleteConnection(ref);
      const deleted = await followerSees('CONNECTION_NOT_FOUND');
      console.log(`follow ${kind}: replacement served after ${replaced} ms, deletion after ${deleted} ms`);
      expect(replaced).toBeLessThan(2_000);
      expect(deleted).toBeLessThan(2_000);
    } finally {
      follower.stdin!.end();
      // A follower stuck (in its open, or waiting for a change that never comes) must not hang
      // the suite: it gets its stdin's end, then a kill.
      const killer = setTimeout(() => follower.kill('SIGKILL'), 10_000);
      if (follower.exitCode === null && follower.signalCode === null) await once(follower, 'exit');
      clearTimeout(killer);
      await writer.close();
    }
  });
});

test("a caller waiting on another instance's refresh is not settled by a probe's write, and takes over when the lease ends", async () => {
  // The other instance is played with SQL: it holds the refresh lease, then a health probe of
  // its writes the row (the token as stale as before), then it goes away without a new token.
  const store = postgresStore();
  const schema = new URL(store).searchParams.get('schema')!;
  const authpipe = new Authpipe({ store, masterKey: newKey(), healthCheckIntervalMs: 0, providers: { oidc: oidc.providerConfig(redirectUri) } });
  /** Resolves once the waiting caller has re-read the row `count` more times. */
  const rereads = async (count: number) => {
    const target = (await authpipe.stats()).storeReads + count;
    while ((await authpipe.stats()).storeReads < target) await new Promise((resolve) => setImmediate(resolve));
  };
  try {
    await authpipe.ready();
    const tokens = await oidc.obtainTokens(redirectUri);
    const ref = { provider: 'oidc', tenantId: 'org_wait', userId: 'waiter' };
    psql(`INSERT INTO ${schema}.leases VALUES ('org_wait', 'oidc', 'waiter', 'refresh', 'elsewhere', ${Date.now() + 120_000})`);
    await authpipe.importConnection({ ...ref, accessToken: tokens.access_token, refreshToken: tokens.refresh_token, expiresAt: Date.now() - 1000 });
    let outcome: 'waiting' | 'served' | 'failed' = 'waiting';
    const served = authpipe.getCredential(ref).then(
      (c) => ((outcome = 'served'), c),
      (e: unknown) => ((outcome = 'failed'), Promise.reject(e)),
    );
    await rereads(2);
    psql(`UPDATE ${schema}.connections SET last_check_at = ${Date.now()}, version = version + 1 WHERE user_id = 'waiter'`);
    await rereads(2);
    expect(outcome).toBe('waiting');
    psql(`DELETE FROM ${schema}.leases WHERE user_id = 'waiter'`);
    const { credential } = await served;
    expect(credential).not.toBe(tokens.access_token);
    expect((await oidc.introspect(credential)).active).toBe(true);
  } finally {
    await authpipe.close();
  }
});

/** What every run must show: no caller ever got an invalid token, and no grant was lost. */
function expectHealthy(summary: ReturnType<typeof summarise>, invalidGrants: number) {
  expect(summary.errors).toEqual({});
  expect(summary.expiredReturns).toBe(0);
  expect(summary.inactive).toEqual([]);
  expect(summary.problems).toEqual([]);
  expect(invalidGrants).toBe(0);
}

async function run(store: string, options: { healthCheckIntervalMs?: number } = {}) {
  const masterKey = newKey();
  const refs = await connectUsers({ store, masterKey, oidc, redirectUri, count: CONNECTIONS });
  const cluster = await Cluster.start({ store, masterKey, oidc, redirectUri, refs, workers: WORKERS, ...options });
  // Counted from "go" until every worker has closed, over exactly that time: the refreshes of
  // the workers' start-up are not theirs to count, and those finished during close() are.
  const before = await oidc.stats();
  const started = Date.now();
  cluster.go(started + SECONDS * 1000);
  const reports = await cluster.reports();
  const after = await oidc.stats();
  const seconds = (Date.now() - started) / 1000;
  const summary = summarise(reports);
  const grants = after.refreshGrants - before.refreshGrants;
  const report = {
    ...summary,
    seconds,
    providerRefreshGrants: grants,
    refreshesPerConnectionPerTokenLifetime: Number((grants / CONNECTIONS / (seconds / TOKEN_TTL_S)).toFixed(2)),
    invalidGrants: after.invalidGrants - before.invalidGrants,
    probes: after.probes - before.probes,
  };
  return { store, masterKey, refs, report };
}

function expectOneRefreshPerToken(report: Awaited<ReturnType<typeof run>>['report']) {
  // A 2 s token is refreshed 0.9-1 s into its life (margin = lifetime / 2): at most about 2 per
  // lifetime, as one process does it (soak.spec.ts), not 4 times that. Fewer on a slow machine,
  // where each refresh starts or ends late and the next is due a second after it was sent. At
  // least one, or tokens went unrefreshed.
  expect(report.refreshesPerConnectionPerTokenLifetime).toBeGreaterThan(1);
  expect(report.refreshesPerConnectionPerTokenLifetime).toBeLessThan(2.3);
  // Other processes' refreshes reach each process's cache, and its callers, in milliseconds.
  // (How many tokens are first served elsewhere depends on how often callers come round to a
  // connection, so on the machine: 1,356 to 28,832 in the runs of 2026-12-01. A few hundred make
  // a median and a p99 worth reporting.)
  expect(report.propagationMs.samples).toBeGreaterThan(200);
  for (const lag of report.cacheLagMs) expect(lag![0]).toBeLessThan(100);
}

test(`PostgreSQL: ${WORKERS} processes, ${CONNECTIONS} connections, ${SECONDS} s: every token valid, no invalid_grant, one refresh per token, one probe per interval`, async () => {
  const probeIntervalMs = 10_000;
  const result = await run(postgresStore(), { healthCheckIntervalMs: probeIntervalMs });
  console.log(`cluster postgres: ${JSON.stringify(result.report)}`);
  expectHealthy(result.report, result.report.invalidGrants);
  expectOneRefreshPerToken(result.report);
  // Each connection probed once per interval by one of the four, not by each of them.
  const rounds = SECONDS / (probeIntervalMs / 1000);
  expect(result.report.probes).toBeGreaterThan(CONNECTIONS * (rounds - 1) * 0.8);
  expect(result.report.probes).toBeLessThan(CONNECTIONS * (rounds + 1) * 1.2);
  await everyConnectionServes(result.store, result.masterKey, oidc, result.refs, new Set());
}, (SECONDS + 180) * 1000);

test(`SQLite: ${WORKERS} processes on one file, ${CONNECTIONS} connections, ${SECONDS} s: the same`, async () => {
  const result = await run(join(dir, 'shared.db'));
  console.log(`cluster sqlite: ${JSON.stringify(result.report)}`);
  expectHealthy(result.report, result.report.invalidGrants);
  expectOneRefreshPerToken(result.report);
  await everyConnectionServes(result.store, result.masterKey, oidc, result.refs, new Set());
}, (SECONDS + 180) * 1000);

test('kill -9 of one process mid-run: its leases expire, the others carry on, nothing else is lost', async () => {
  const seconds = SECONDS / 2;
  const store = postgresStore();
  const masterKey = newKey();
  const refs = await connectUsers({ store, masterKey, oidc, redirectUri, count: CONNECTIONS });
  const httpTimeoutMs = 3_000; // lease = request timeout + 5 s
  const cluster = await Cluster.start({ store, masterKey, oidc, redirectUri, refs, workers: WORKERS, httpTimeoutMs });
  const before = await oidc.stats();
  const started = Date.now();
  cluster.go(started + seconds * 1000);
  await new Promise((resolve) => setTimeout(resolve, (seconds * 1000) / 3));
  cluster.kill(0);
  const killedAt = Date.now();
  // The refreshes the dead process had under way: its leases in the store.
  const held = refreshLeasesHeldBy(store, cluster.pids[0]!);
  const reports: WorkerReport[] = await cluster.reports();
  const after = await oidc.stats();
  const summary = summarise(reports);
  const waitsAfterKill = reports.flatMap((r) => r.waits).filter((w) => w.at >= killedAt);
  const waited = new Map<string, number>();
  for (const w of waitsAfterKill) waited.set(w.userId, Math.max(waited.get(w.userId) ?? 0, w.ms));
  // A refresh the dead process had sent may have rotated the token at the provider with the new
  // one never stored: that grant is gone (a reuse revokes it). Nothing else may be lost.
  const revoked = new Set([...summary.problems.filter((p) => p.type === 'connection.revoked').map((p) => p.userId), ...reports.flatMap((r) => r.erroredConnections)]);
  const report = {
    leasesHeldByTheDeadProcess: held.length,
    connectionsLost: [...revoked],
    connectionsThatWaited: waited.size,
    longestWaitMs: Math.max(0, ...waited.values()),
    waitsMs: [...waited.values()].sort((a, b) => a - b),
    calls: summary.calls,
    errors: summary.errors,
    invalidGrants: after.invalidGrants - before.invalidGrants,
    propagationMs: summary.propagationMs,
    leaseTakeovers: reports.map((r) => metricSum(r.metrics, 'authpipe_lease_takeovers_total')),
  };
  console.log(`cluster kill -9: ${JSON.stringify(report)}`);
  // The dead process's refresh leases ran out; the survivors took them over, and said so.
  if (held.length > 0) expect(report.leaseTakeovers.reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(1);
  for (const userId of revoked) expect(held).toContain(userId);
  // At worst a caller waits out a dead lease whole (httpTimeoutMs + 5 s), then the refresh of
  // the instance that takes over (at most one request timeout).
  expect(report.longestWaitMs).toBeLessThan(httpTimeoutMs + 5_000 + httpTimeoutMs + 2_000);
  expect(summary.expiredReturns).toBe(0);
  expect(summary.inactive).toEqual([]);
  expect(report.invalidGrants).toBeLessThanOrEqual(held.length);
  await everyConnectionServes(store, masterKey, oidc, refs, revoked);
}, (SECONDS + 180) * 1000);

// Restarting the database needs pg_ctlcluster and root: required under CI, skipped (loudly) elsewhere.
const canRestartPostgres = process.getuid?.() === 0 && existsSync('/usr/bin/pg_ctlcluster') && existsSync('/etc/postgresql');
if (!canRestartPostgres && !process.env.CI) console.warn('cluster.spec.ts: the PostgreSQL restart test is skipped (it needs root and pg_ctlcluster)');

(canRestartPostgres || process.env.CI ? test : test.skip)('PostgreSQL restarts mid-run: callers are served cached valid tokens, instances reconnect and resync, nothing is lost', async () => {
  const seconds = SECONDS / 2;
  // Tokens that outlive the restart (10 s, refreshed 5 s before expiry), from their own server.
  const server = await startOidcProvider({ redirectUris: [redirectUri], accessTokenTtl: 10 });
  try {
    const store = postgresStore();
    const masterKey = newKey();
    const refs = await connectUsers({ store, masterKey, oidc: server, redirectUri, count: CONNECTIONS });
    const cluster = await Cluster.start({ store, masterKey, oidc: server, redirectUri, refs, workers: WORKERS });
    const before = await server.stats();
    cluster.go(Date.now() + seconds * 1000);
    await new Promise((resolve) => setTimeout(resolve, (seconds * 1000) / 3));
    const version = readdirSync('/etc/postgresql')[0]!;
    const down = Date.now();
    execFileSync('pg_ctlcluster', ['--skip-systemctl-redirect', version, 'main', 'restart', '-m', 'fast'], { stdio: 'ignore' });
    const restartMs = Date.now() - down;
    const atRestart = await server.stats();
    const reports = await cluster.reports();
    const after = await server.stats();
    const summary = summarise(reports);
    const report = {
      restartMs,
      calls: summary.calls,
      errors: summary.errors,
      resyncs: summary.resyncs,
      refreshGrantsBeforeRestart: atRestart.refreshGrants - before.refreshGrants,
      refreshGrantsAfterRestart: after.refreshGrants - atRestart.refreshGrants,
      invalidGrants: after.invalidGrants - before.invalidGrants,
      propagationMs: summary.propagationMs,
      storeErrors: reports.map((r) => metricSum(r.metrics, 'authpipe_store_errors_total')),
      storeReconnects: reports.map((r) => metricSum(r.metrics, 'authpipe_store_reconnects_total')),
      storeUp: reports.map((r) => metricSum(r.metrics, 'authpipe_store_up')),
    };
    console.log(`cluster postgres restart: ${JSON.stringify(report)}`);
    // Every worker's store answers again at the end; one that failed an operation in the
    // restart's window (they serve from the cache, so some do not touch the store in it) saw
    // the store come back too. The outage in the metrics and logs is staged in the test below.
    expect(report.storeUp).toEqual(report.storeUp.map(() => 1));
    report.storeErrors.forEach((errors, i) => expect(report.storeReconnects[i]).toBe(errors > 0 ? 1 : 0));
    expectHealthy(summary, report.invalidGrants);
    for (const resyncs of summary.resyncs) expect(resyncs).toBeGreaterThanOrEqual(1);
    // Refreshing went on after the restart: every connection at least once.
    expect(report.refreshGrantsAfterRestart).toBeGreaterThanOrEqual(CONNECTIONS);
    await everyConnectionServes(store, masterKey, server, refs, new Set());
  } finally {
    await server.close();
  }
}, (SECONDS + 180) * 1000);

(canRestartPostgres || process.env.CI ? test : test.skip)('a PostgreSQL restart shows in the metrics and the logs: operations failed, the store unavailable, then answering again', async () => {
  const store = postgresStore();
  const logFile = join(dir, `outage-${Date.now()}.log`);
  const logger = pino({ level: 'trace' }, pino.destination({ dest: logFile, sync: true }));
  const authpipe = new Authpipe({ store, masterKey: newKey(), healthCheckIntervalMs: 0, logger });
  const ref = { provider: 'attio', tenantId: 'org_outage', userId: 'u1' };
  try {
    await authpipe.importConnection({ ...ref, accessToken: 'outage-token' });
    const version = readdirSync('/etc/postgresql')[0]!;
    let restarted = false;
    const restart = new Promise<void>((resolve, reject) =>
      execFile('pg_ctlcluster', ['--skip-systemctl-redirect', version, 'main', 'restart', '-m', 'fast'], (err) => ((restarted = true), err ? reject(err) : resolve())),
    );
    // Store reads (not the cache) all through the restart, then until one succeeds after it.
    let answeredAfter = false;
    while (!restarted || !answeredAfter) {
      const read = await authpipe.getConnection(ref).then(() => true, (e: { code?: string }) => (expect(e.code).toBe('STORE_ERROR'), false));
      if (restarted) answeredAfter = read;
    }
    await restart;
    const metrics = await authpipe.metrics();
    expect(metricSum(metrics, 'authpipe_store_errors_total')).toBeGreaterThanOrEqual(1);
    expect(metricSum(metrics, 'authpipe_store_reconnects_total')).toBeGreaterThanOrEqual(1);
    expect(metricSum(metrics, 'authpipe_store_up')).toBe(1);
  } finally {
    await authpipe.close();
  }
  const records = readFileSync(logFile, 'utf8').trim().split('\n').map((line) => JSON.parse(line) as Record<string, unknown>);
  const outages = records.filter((r) => r.event === 'store.unavailable' || r.event === 'store.reconnected');
  console.log(`postgres outage in the log: ${JSON.stringify(outages.map(({ time: _time, pid: _pid, hostname: _hostname, ...r }) => r))}`);
  expect(outages.map((r) => r.event)).toEqual(expect.arrayContaining(['store.unavailable', 'store.reconnected']));
  const down = outages.find((r) => r.event === 'store.unavailable')!;
  expect(down).toMatchObject({ level: 50, code: 'STORE_ERROR' });
  expect(JSON.stringify(down)).not.toContain('outage-token');
  expect(outages.find((r) => r.event === 'store.reconnected')).toMatchObject({ level: 30, downMs: expect.any(Number) });
}, 60_000);
