// Health probes against the Attio sandbox: Attio tokens never expire, so probes (GET /v2/self)
// are the only way to notice a revoked or uninstalled connection.
import { Authpipe, type ConnectionEvent, type ConnectionEventName } from '..';
import { createSandbox, type Sandbox } from '../dist/testing';
import { newKey, rejection, testStore } from './helpers';

const INTERVAL_MS = 400;
const redirectUri = 'http://127.0.0.1:9/authpipe/callback/attio';
let sandbox: Sandbox;
let authpipe: Authpipe;

beforeEach(async () => {
  sandbox = await createSandbox({ provider: 'attio' });
  authpipe = new Authpipe({
    store: testStore(),
    masterKey: newKey(),
    healthCheckIntervalMs: INTERVAL_MS,
    providers: { attio: sandbox.providerConfig({ redirectUri, requiredScopes: ['record_permission:read-write'] }) },
  });
});

afterEach(async () => {
  await authpipe.close();
  await sandbox.close();
});

async function connect(userId: string) {
  const ref = { provider: 'attio', tenantId: 'org_acme', userId };
  const { url } = await authpipe.startConnect(ref);
  await authpipe.handleCallback({ url: await sandbox.consent(url) });
  return ref;
}

function next(name: ConnectionEventName, userId: string): Promise<ConnectionEvent> {
  return new Promise((resolve) => {
    const listener = (event: ConnectionEvent) => {
      if (event.userId !== userId) return;
      authpipe.off(name, listener);
      resolve(event);
    };
    authpipe.on(name, listener);
  });
}

test('a revoked token is noticed within one probe interval; getCredential then refuses it', async () => {
  const ref = await connect('u1');
  const { credential } = await authpipe.getCredential(ref);
  const revokedAt = Date.now();
  sandbox.revoke(credential);
  const event = await next('connection.revoked', 'u1');
  expect(event.at.getTime() - revokedAt).toBeLessThanOrEqual(INTERVAL_MS + 200);
  expect(event.error?.code).toBe('inactive');
  await rejection(authpipe.getCredential(ref), 'CONNECTION_REVOKED');
  expect(await authpipe.getConnection(ref)).toMatchObject({ status: 'revoked', lastCheckAt: expect.any(Date) });
});

test('a 5xx storm degrades the connection, which keeps serving, and recovers when Attio does', async () => {
  const ref = await connect('u2');
  const before = await authpipe.getCredential(ref);
  sandbox.failNext('identity', 3, 503);
  const degraded = await next('connection.degraded', 'u2');
  expect(degraded).toMatchObject({ status: 'degraded', error: { code: 'PROVIDER_ERROR' } });
  expect((await authpipe.getCredential(ref)).credential).toBe(before.credential);
  const recovered = await next('connection.recovered', 'u2');
  expect(recovered.status).toBe('active');
  expect((await authpipe.getConnection(ref)).lastError).toBeNull();
});

test('a lost required scope makes the connection insufficient_scope', async () => {
  const ref = await connect('u3');
  sandbox.setScopes(['object_configuration:read']);
  const connection = await authpipe.checkConnection(ref);
  expect(connection).toMatchObject({ status: 'insufficient_scope', lastError: { code: 'INSUFFICIENT_SCOPE' } });
  expect(connection.lastError!.message).toContain('record_permission:read-write');
  sandbox.setScopes(['record_permission:read-write']);
  expect((await authpipe.checkConnection(ref)).status).toBe('active');
});

test('uninstalling the app revokes every connection; health() counts by status and provider', async () => {
  const refs = [await connect('a'), await connect('b'), await connect('c')];
  expect(await authpipe.health()).toEqual({ total: 3, byStatus: { active: 3 }, byProvider: { attio: { active: 3 } } });
  sandbox.uninstall();
  for (const ref of refs) expect((await authpipe.checkConnection(ref)).status).toBe('revoked');
  expect(await authpipe.health()).toEqual({ total: 3, byStatus: { revoked: 3 }, byProvider: { attio: { revoked: 3 } } });
});

describe('a HubSpot-like provider: refresh and introspection', () => {
  test.each([false, true])('connect, refresh ahead of expiry, probe by introspection (rotating refresh tokens: %s)', async (rotate) => {
    const hub = await createSandbox({ provider: 'hubspot', accessTokenTtl: 2, rotateRefreshTokens: rotate });
    const app = new Authpipe({ store: testStore(), masterKey: newKey(), healthCheckIntervalMs: 0, providers: { hubspot: hub.providerConfig({ redirectUri }) } });
    try {
      const ref = { provider: 'hubspot', tenantId: 'org_acme', userId: 'u' };
      const { url } = await app.startConnect(ref);
      expect(new URL(url).searchParams.get('scope')).toBe('oauth');
      const connection = await app.handleCallback({ url: await hub.consent(url) });
      expect(connection).toMatchObject({ hasRefreshToken: true, status: 'active' });
      const first = await app.getCredential(ref);
      await new Promise<void>((resolve) => app.once('connection.refreshed', () => resolve()));
      const second = await app.getCredential(ref);
      expect(second.credential).not.toBe(first.credential);
      expect(hub.refreshes).toBe(1);
      expect((await app.checkConnection(ref)).status).toBe('active');
      hub.revoke(second.credential);
      expect((await app.checkConnection(ref)).status).toBe('revoked');
    } finally {
      await app.close();
      await hub.close();
    }
  });
});
