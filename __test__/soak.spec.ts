// Soak: 100 connections to a strict rotating authorization server (oidc-provider: 2-second
// access tokens, refresh-token rotation with replay detection), 8 concurrent callers calling
// getCredential for SOAK_SECONDS (default 60). Every token a caller gets must be valid then (by the
// server's introspection, or by its record of the token if it expired before the introspection).
import { Authpipe, type ConnectionEvent } from '..';
import { newKey, testStore } from './helpers';
import { followUntil, startOidcProvider, type OidcProvider } from './support/oidc';

const SECONDS = Number(process.env.SOAK_SECONDS ?? 60);
const CONNECTIONS = 100;
const CALLERS = 8;
const redirectUri = 'http://127.0.0.1:9/authpipe/callback/oidc';

let oidc: OidcProvider;
let authpipe: Authpipe;

beforeAll(async () => {
  oidc = await startOidcProvider({ redirectUris: [redirectUri], accessTokenTtl: 2 });
  authpipe = new Authpipe({
    store: testStore(),
    masterKey: newKey(),
    healthCheckIntervalMs: 0,
    providers: { oidc: oidc.providerConfig(redirectUri) },
  });
  await authpipe.ready();
});

afterAll(async () => {
  await authpipe.close();
  await oidc.close();
});

test(`${CONNECTIONS} connections, ${CALLERS} callers, ${SECONDS} s: every token valid, no invalid_grant, one refresh per token`, async () => {
  const refs: Array<{ provider: string; tenantId: string; userId: string }> = [];
  for (let i = 0; i < CONNECTIONS; i++) {
    const ref = { provider: 'oidc', tenantId: `tenant_${i % 10}`, userId: `user_${i}` };
    const { url } = await authpipe.startConnect(ref);
    await authpipe.handleCallback({ url: await followUntil(url, redirectUri) });
    refs.push(ref);
  }
  const events: ConnectionEvent[] = [];
  for (const name of ['connection.refreshed', 'connection.refresh_failed', 'connection.revoked'] as const) {
    authpipe.on(name, (e: ConnectionEvent) => events.push(e));
  }
  const { refreshGrants: grantsBefore } = await oidc.stats();

  const seen = new Set<string>();
  let calls = 0;
  let introspected = 0;
  let expiredReturns = 0;
  const inactive: string[] = [];
  const deadline = Date.now() + SECONDS * 1000;
  let expiredSinceReturn = 0;
  const check = async (token: string, returnedAt: number) => {
    introspected++;
    const verdict = await oidc.validAt(token, returnedAt);
    if (verdict === 'expired-since') expiredSinceReturn++;
    else if (verdict !== 'active') inactive.push(token.slice(0, 6));
  };
  await Promise.all(
    Array.from({ length: CALLERS }, async (_, caller) => {
      let i = caller;
      while (Date.now() < deadline) {
        const { credential, expiresAt } = await authpipe.getCredential(refs[i++ % CONNECTIONS]!);
        const returnedAt = Date.now();
        calls++;
        if (expiresAt!.getTime() <= returnedAt) expiredReturns++;
        // Every new token is checked with the provider the moment it is returned, and 1% of the rest.
        if (!seen.has(credential)) {
          seen.add(credential);
          await check(credential, returnedAt);
        } else if (calls % 100 === 0) {
          await check(credential, returnedAt);
        }
        if (calls % 64 === 0) await new Promise((resolve) => setImmediate(resolve)); // let timers and I/O run
      }
    }),
  );

  // Refreshes keep running (one per connection per second): wait until every refresh the provider
  // had granted when we looked has been stored and announced.
  const { refreshGrants } = await oidc.stats();
  const refreshedCount = () => events.filter((e) => e.type === 'connection.refreshed').length;
  await new Promise<void>((resolve) => {
    const done = () => refreshedCount() >= refreshGrants - grantsBefore;
    if (done()) return resolve();
    const listener = () => {
      if (!done()) return;
      authpipe.off('connection.refreshed', listener);
      resolve();
    };
    authpipe.on('connection.refreshed', listener);
  });
  const refreshed = events.filter((e) => e.type === 'connection.refreshed').slice(0, refreshGrants - grantsBefore);
  const perConnection = refreshed.length / CONNECTIONS;
  const lifetimes = SECONDS / 2;
  const report = {
    calls,
    distinctTokens: seen.size,
    introspected,
    expiredSinceReturn,
    refreshesPerConnection: Number(perConnection.toFixed(1)),
    refreshesPerConnectionPerTokenLifetime: Number((perConnection / lifetimes).toFixed(2)),
    providerRefreshGrants: refreshGrants - grantsBefore,
    transientFailures: events.filter((e) => e.type === 'connection.refresh_failed').length,
  };
  console.log(`soak: ${JSON.stringify(report)}`);

  expect(inactive).toEqual([]);
  expect(expiredReturns).toBe(0);
  expect(events.filter((e) => e.type === 'connection.revoked')).toEqual([]);
  // Each refresh the provider granted was stored and announced (and, since the server revokes the
  // grant on any reuse of a refresh token, none was lost or repeated: nothing was revoked above).
  expect(refreshed).toHaveLength(report.providerRefreshGrants);
  // A 2 s token is refreshed 0.9-1 s into its life (margin = lifetime / 2): about 2 per lifetime.
  expect(report.refreshesPerConnectionPerTokenLifetime).toBeGreaterThan(1.5);
  expect(report.refreshesPerConnectionPerTokenLifetime).toBeLessThan(2.3);
}, (SECONDS + 60) * 1000);
