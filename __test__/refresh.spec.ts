// Silent refresh against a strict authorization server: panva's oidc-provider with refresh-token
// rotation and replay detection (reusing a rotated refresh token revokes the whole grant), and
// 4-second access tokens: refreshed 2 s into their life, and served, while no refresh can
// replace them, until their last second (expires_in is whole seconds).
import { Authpipe, type ConnectionEvent, type ConnectionEventName, type RefreshFailedEvent } from '..';
import { join } from 'node:path';
import { newKey, postgresStore, rejection, STORE_KIND, tempDir, testStore } from './helpers';
import { followUntil, startOidcProvider, type OidcProvider } from './support/oidc';

const redirectUri = 'http://127.0.0.1:9/authpipe/callback/oidc'; // never contacted: we stop at it
let oidc: OidcProvider;
let authpipe: Authpipe;
const events: ConnectionEvent[] = [];
const dir = tempDir();

beforeAll(async () => {
  oidc = await startOidcProvider({ redirectUris: [redirectUri], accessTokenTtl: 4 });
  authpipe = new Authpipe({
    store: testStore(),
    masterKey: newKey(),
    httpTimeoutMs: 500,
    healthCheckIntervalMs: 0,
    providers: { oidc: oidc.providerConfig(redirectUri) },
  });
  for (const name of ['connection.refreshed', 'connection.refresh_failed', 'connection.degraded', 'connection.revoked', 'connection.recovered'] as const) {
    authpipe.on(name, (event: ConnectionEvent) => events.push(event));
  }
  await authpipe.ready();
});

// Faults are injected at the shared token endpoint: only one connection may be refreshing at a
// time, so each test deletes what it connected (which also stops its refreshes).
afterEach(async () => {
  for (const c of (await authpipe.listConnections()).connections) await authpipe.deleteConnection(c);
});

afterAll(async () => {
  await authpipe.close();
  await oidc.close();
});

async function connect(userId: string) {
  const ref = { provider: 'oidc', tenantId: 'org_acme', userId };
  const { url } = await authpipe.startConnect(ref);
  await authpipe.handleCallback({ url: await followUntil(url, redirectUri) });
  return ref;
}

/** Resolves with the next event named `name` for `userId`. */
function next<E extends ConnectionEvent>(name: ConnectionEventName, userId: string): Promise<E> {
  return new Promise((resolve) => {
    const listener = (event: ConnectionEvent) => {
      if (event.userId === userId) {
        authpipe.off(name, listener);
        resolve(event as E);
      }
    };
    authpipe.on(name, listener);
  });
}

const eventsOf = (userId: string, type: ConnectionEventName) => events.filter((e) => e.userId === userId && e.type === type);

test('the scheduler refreshes before expiry; the new refresh token is stored and works', async () => {
  const ref = await connect('scheduled');
  const first = await authpipe.getCredential(ref);
  const refreshed = await next('connection.refreshed', 'scheduled'); // about 2 s before expiry
  expect(refreshed.at.getTime()).toBeLessThan(first.expiresAt!.getTime());
  const second = await authpipe.getCredential(ref);
  expect(second.credential).not.toBe(first.credential);
  expect((await oidc.introspect(second.credential)).active).toBe(true);
  // Two more rotations: each uses the refresh token the last one returned (a reuse would
  // have killed the grant).
  await next('connection.refreshed', 'scheduled');
  await next('connection.refreshed', 'scheduled');
  expect((await oidc.introspect((await authpipe.getCredential(ref)).credential)).active).toBe(true);
  expect(eventsOf('scheduled', 'connection.revoked')).toHaveLength(0);
});

test('concurrent callers on a stale token wait for one shared refresh', async () => {
  // Tokens obtained elsewhere and imported already expired: stale from the first call.
  const tokens = await oidc.obtainTokens(redirectUri);
  const ref = { provider: 'oidc', tenantId: 'org_acme', userId: 'stale' };
  const { refreshGrants: before } = await oidc.stats();
  await authpipe.importConnection({ ...ref, accessToken: tokens.access_token, refreshToken: tokens.refresh_token, expiresAt: Date.now() - 1000 });
  const results = await Promise.all(Array.from({ length: 20 }, () => authpipe.getCredential(ref)));
  expect(new Set(results.map((r) => r.credential)).size).toBe(1);
  expect(results[0]!.credential).not.toBe(tokens.access_token); // never the stale one
  expect((await oidc.introspect(results[0]!.credential)).active).toBe(true);
  expect((await oidc.stats()).refreshGrants).toBe(before + 1);
});

test('callers queued behind a refresh that fails share its outcome: no second request before the backoff', async () => {
  const tokens = await oidc.obtainTokens(redirectUri);
  const ref = { provider: 'oidc', tenantId: 'org_acme', userId: 'queued' };
  const { tokenRequests: before } = await oidc.stats();
  // The first refresh (the scheduler's, at import) is answered 503 after 300 ms: the callers
  // below queue behind it while it is under way.
  await oidc.injectFaults([{ delayMs: 300 }]);
  const recovered = next('connection.recovered', 'queued');
  await authpipe.importConnection({ ...ref, accessToken: tokens.access_token, refreshToken: tokens.refresh_token, expiresAt: Date.now() - 1000 });
  const outcomes = await Promise.allSettled(Array.from({ length: 20 }, () => authpipe.getCredential(ref)));
  // One request, and it failed; the token it was to replace is dead, so every caller hears that.
  expect(outcomes.map((o) => (o.status === 'rejected' ? (o.reason as { code?: string }).code : 'served'))).toEqual(Array(20).fill('CONNECTION_EXPIRED'));
  expect((await oidc.stats()).tokenRequests).toBe(before + 1);
  // The retry comes after the backoff, with the refresh token still unspent.
  await recovered;
  expect((await oidc.stats()).tokenRequests).toBe(before + 2);
  const { credential } = await authpipe.getCredential(ref);
  expect((await oidc.introspect(credential)).active).toBe(true);
});

test('invalid_grant marks the connection revoked, with an event, and getCredential says so', async () => {
  const ref = await connect('revoked');
  const { credential } = await authpipe.getCredential(ref);
  await oidc.revoke(credential); // oidc-provider drops the whole grant, refresh token included
  const revoked = next('connection.revoked', 'revoked');
  const connection = await authpipe.refreshConnection(ref);
  expect(connection).toMatchObject({ status: 'revoked', lastError: { code: 'invalid_grant' } });
  expect((await revoked).error?.code).toBe('invalid_grant');
  const err = await rejection(authpipe.getCredential(ref), 'CONNECTION_REVOKED');
  expect(err.message).toContain("tenant 'org_acme' and user 'revoked'");
});

describe('faults at the token endpoint: degraded, still serving, then recovered', () => {
  const faults: Array<[string, Record<string, unknown>]> = [
    ['HTTP 500', { status: 500 }],
    ['429 with Retry-After in seconds', { status: 429, retryAfter: '1', body: {} }],
    ['429 with Retry-After as an HTTP date', { status: 429, retryAfter: new Date(Date.now() + 1000).toUTCString(), body: {} }],
    ['a timeout', { delayMs: 1500 }],
    ['malformed JSON', { malformed: true }],
    ['a connection reset', { reset: true }],
  ];

  test.each(faults)('%s', async (name, fault) => {
    const userId = `fault-${name.replace(/\W+/g, '-')}`;
    const ref = await connect(userId);
    const before = await authpipe.getCredential(ref);
    await oidc.injectFaults([fault]);
    const failed = await next<RefreshFailedEvent>('connection.refresh_failed', userId);
    expect(failed).toMatchObject({ attempt: 1, status: 'degraded' });
    expect(failed.nextRetryAt.getTime()).toBeGreaterThan(failed.at.getTime());
    // The still-valid token keeps being served meanwhile.
    expect((await authpipe.getConnection(ref)).status).toBe('degraded');
    const during = await authpipe.getCredential(ref);
    expect(during.credential).toBe(before.credential);
    // The provider is fine again: the retry succeeds with the same, unspent refresh token.
    await next('connection.recovered', userId);
    const after = await authpipe.getCredential(ref);
    expect(after.credential).not.toBe(before.credential);
    expect((await oidc.introspect(after.credential)).active).toBe(true);
    expect(eventsOf(userId, 'connection.revoked')).toHaveLength(0);
  });

  test('Retry-After is honoured', async () => {
    const ref = await connect('retry-after');
    await oidc.injectFaults([{ status: 429, retryAfter: '3', body: {} }]);
    const failed = await next<RefreshFailedEvent>('connection.refresh_failed', 'retry-after');
    expect(failed.nextRetryAt.getTime() - failed.at.getTime()).toBeGreaterThanOrEqual(3000);
    await next('connection.recovered', 'retry-after');
    expect((await authpipe.getConnection(ref)).status).toBe('active');
  });

  test('a response lost after the provider rotated cannot be recovered, and is reported as revoked', async () => {
    // reference/peers.md §12 (3): the provider spent the refresh token, we never got the new one.
    // We re-read, retry once the only token we have, and the server's replay detection ends the grant.
    const ref = await connect('lost');
    await oidc.injectFaults([{ lose: true }]);
    const revoked = await next('connection.revoked', 'lost');
    expect(revoked.error?.code).toBe('invalid_grant');
    await rejection(authpipe.getCredential(ref), 'CONNECTION_REVOKED');
  });
});

test("a token's life counts from the request: a slow answer does not make it outlive the server's expiry", async () => {
  // The server starts a token's life when it issues it; an answer that takes 1.5 s to arrive has
  // 1.5 s less left than its expires_in says. 60-second tokens (30 s margin), so no refresh runs
  // on its own while we look.
  const server = await startOidcProvider({ redirectUris: [redirectUri], accessTokenTtl: 60 });
  const patient = new Authpipe({
    store: testStore(),
    masterKey: newKey(),
    httpTimeoutMs: 5_000,
    healthCheckIntervalMs: 0,
    providers: { oidc: server.providerConfig(redirectUri) },
  });
  /** How far past the server's expiry we believe the token lives: under 1 s (expires_in is whole seconds). */
  const overshoot = async (credential: { credential: string; expiresAt: Date | null }) => {
    const record = await server.tokenRecord(credential.credential);
    return credential.expiresAt!.getTime() - record!.expiresAt;
  };
  try {
    const ref = { provider: 'oidc', tenantId: 'org_acme', userId: 'slow' };
    const { url } = await patient.startConnect(ref);
    const callback = await followUntil(url, redirectUri);
    await server.injectFaults([{ slowMs: 1_500 }]); // the code exchange
    await patient.handleCallback({ url: callback });
    expect(await overshoot(await patient.getCredential(ref))).toBeLessThan(1_000);
    await server.injectFaults([{ slowMs: 1_500 }]); // a refresh
    await patient.refreshConnection(ref);
    expect(await overshoot(await patient.getCredential(ref))).toBeLessThan(1_000);
  } finally {
    await patient.close();
    await server.close();
  }
});

test('a new token that arrives already stale is refreshed again before a caller gets it', async () => {
  // A 4 s token is stale 2 s into its life; its answer takes 2.5 s.
  const patient = new Authpipe({
    store: testStore(),
    masterKey: newKey(),
    httpTimeoutMs: 5_000,
    healthCheckIntervalMs: 0,
    providers: { oidc: oidc.providerConfig(redirectUri) },
  });
  try {
    const tokens = await oidc.obtainTokens(redirectUri);
    const ref = { provider: 'oidc', tenantId: 'org_acme', userId: 'late' };
    const { refreshGrants: before } = await oidc.stats();
    await oidc.injectFaults([{ slowMs: 2_500 }]); // the first refresh, which starts on import
    await patient.importConnection({ ...ref, accessToken: tokens.access_token, refreshToken: tokens.refresh_token, expiresAt: Date.now() - 1000 });
    const served = await patient.getCredential(ref);
    expect((await oidc.stats()).refreshGrants - before).toBe(2);
    expect(served.expiresAt!.getTime() - Date.now()).toBeGreaterThan(2_000); // not stale
    expect((await oidc.introspect(served.credential)).active).toBe(true);
  } finally {
    await patient.close();
  }
});

test('close() waits for a refresh already sent: its rotated refresh token is stored, and its event delivered', async () => {
  // Exiting before the answer is stored would lose the grant: the provider has spent the old
  // refresh token. The answer is held back 1 s, and close() is called while it is.
  const store = STORE_KIND === 'sqlite' ? join(dir, 'closing.db') : postgresStore();
  const masterKey = newKey();
  const settings = { store, masterKey, httpTimeoutMs: 5_000, healthCheckIntervalMs: 0, providers: { oidc: oidc.providerConfig(redirectUri) } };
  const closing = new Authpipe(settings);
  const refreshed: ConnectionEvent[] = [];
  closing.on('connection.refreshed', (event) => refreshed.push(event));
  const tokens = await oidc.obtainTokens(redirectUri);
  const ref = { provider: 'oidc', tenantId: 'org_acme', userId: 'closing' };
  await closing.importConnection({ ...ref, accessToken: tokens.access_token, refreshToken: tokens.refresh_token, expiresAt: Date.now() + 3_600_000 });
  const before = await oidc.stats();
  await oidc.injectFaults([{ slowMs: 1_000 }]);
  const forced = closing.refreshConnection(ref);
  while ((await oidc.stats()).refreshGrants === before.refreshGrants) await new Promise((resolve) => setImmediate(resolve));
  await closing.close();
  expect(refreshed.map((e) => e.userId)).toEqual(['closing']);
  expect((await forced).status).toBe('active');
  // The next instance refreshes with the rotated token (the spent one would revoke the grant).
  const next = new Authpipe(settings);
  try {
    expect((await next.refreshConnection(ref)).status).toBe('active');
    expect((await oidc.stats()).invalidGrants).toBe(before.invalidGrants);
  } finally {
    await next.close();
  }
});

test('events carry no secret', async () => {
  const ref = await connect('secretless');
  const refreshed = next('connection.refreshed', 'secretless');
  const { credential } = await authpipe.getCredential(ref);
  const text = JSON.stringify(await refreshed);
  expect(text).not.toContain(credential);
  expect(Object.keys(await refreshed).sort()).toEqual(['at', 'error', 'expiresAt', 'provider', 'status', 'tenantId', 'type', 'userId']);
});
