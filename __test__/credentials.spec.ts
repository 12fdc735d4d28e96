import { join } from 'node:path';
import { Authpipe } from '..';
import { jwtLike, newKey, open, opaque, rejection, tempDir, testStore } from './helpers';

const acme = { provider: 'attio', tenantId: 'org_acme', userId: 'user_1' };

describe('importConnection and getCredential', () => {
  const authpipe = open({ store: testStore(), masterKey: newKey() });

  test('an imported OAuth connection is served with its type, expiry and extras', async () => {
    const accessToken = jwtLike('a1');
    const expiresAt = new Date(Date.now() + 3_600_000);
    const connection = await authpipe.importConnection({
      provider: 'salesforce',
      tenantId: 'org_acme',
      userId: 'user_1',
      accessToken,
      refreshToken: opaque(),
      expiresAt,
      scopes: ['api', 'refresh_token'],
      extras: { instance_url: 'https://acme.my.salesforce.com' },
    });
    expect(connection).toMatchObject({ provider: 'salesforce', status: 'active', type: 'oauth2', hasRefreshToken: true });
    expect(connection.scopes).toEqual(['api', 'refresh_token']);

    const credential = await authpipe.getCredential({ provider: 'salesforce', tenantId: 'org_acme', userId: 'user_1' });
    expect(credential).toEqual({
      credential: accessToken,
      type: 'oauth2',
      expiresAt,
      extras: { instance_url: 'https://acme.my.salesforce.com' },
    });
    expect(Object.isFrozen(credential)).toBe(true);
  });

  test('an API key is served as type api_key with no expiry', async () => {
    const apiKey = opaque();
    await authpipe.importConnection({ provider: 'close', tenantId: 'org_acme', userId: 'user_1', apiKey });
    const credential = await authpipe.getCredential({ provider: 'close', tenantId: 'org_acme', userId: 'user_1' });
    expect(credential).toEqual({ credential: apiKey, type: 'api_key', expiresAt: null, extras: {} });
  });

  test('the memo serves warm calls and drops a value the moment the connection changes', async () => {
    await authpipe.importConnection({ ...acme, accessToken: 'first-token' });
    const first = await authpipe.getCredential(acme);
    expect(await authpipe.getCredential(acme)).toBe(first); // memo hit: the very same object

    await authpipe.importConnection({ ...acme, accessToken: 'second-token' });
    expect((await authpipe.getCredential(acme)).credential).toBe('second-token');

    expect(await authpipe.deleteConnection(acme)).toMatchObject({ deleted: true });
    await rejection(authpipe.getCredential(acme), 'CONNECTION_NOT_FOUND');
    expect(await authpipe.deleteConnection(acme)).toMatchObject({ deleted: false });
  });

  test('an expired access token is never served', async () => {
    const ref = { ...acme, userId: 'expired' };
    await authpipe.importConnection({ ...ref, accessToken: 'old', expiresAt: Date.now() - 1000 });
    const err = await rejection(authpipe.getCredential(ref), 'CONNECTION_EXPIRED');
    expect(err.message).toContain("tenant 'org_acme'");
    // Nor one in its last second: expires_in is whole seconds, so it may be dead already.
    await authpipe.importConnection({ ...ref, accessToken: 'dying', expiresAt: Date.now() + 500 });
    await rejection(authpipe.getCredential(ref), 'CONNECTION_EXPIRED');
  });

  test('the memo lets go of a token before its last second, without reading a clock', async () => {
    const ref = { ...acme, userId: 'short-lived' };
    // Served until 1 s before expiry; the engine invalidates memos a second before that.
    const expiresAt = Date.now() + 2500;
    await authpipe.importConnection({ ...ref, accessToken: 'short', expiresAt });
    await authpipe.getCredential(ref); // fills the memo
    const first = authpipe.getCredential(ref);
    expect(authpipe.getCredential(ref)).toBe(first); // a memo hit hands out the same promise
    // Wait for the event (the memo missing), not for a fixed time.
    while (authpipe.getCredential(ref) === first) {
      expect(Date.now()).toBeLessThan(expiresAt - 1000);
      await new Promise((resolve) => setImmediate(resolve));
    }
    expect(Date.now()).toBeGreaterThanOrEqual(expiresAt - 2000 - 50);
    expect(Date.now()).toBeLessThan(expiresAt - 1000);
    // Rust, which reads the clock, still serves it.
    expect((await authpipe.getCredential(ref)).credential).toBe('short');
  });

  test('getConnection returns metadata and never a secret', async () => {
    const ref = { ...acme, userId: 'meta' };
    const accessToken = opaque();
    const refreshToken = opaque();
    await authpipe.importConnection({ ...ref, accessToken, refreshToken, extras: { secretish: 'x' } });
    const connection = await authpipe.getConnection(ref);
    expect(connection).toMatchObject({ ...ref, status: 'active', account: null, lastError: null });
    expect(connection.createdAt).toBeInstanceOf(Date);
    const text = JSON.stringify(connection);
    expect(text).not.toContain(accessToken);
    expect(text).not.toContain(refreshToken);
    await rejection(authpipe.getConnection({ ...ref, userId: 'nobody' }), 'CONNECTION_NOT_FOUND');
  });

  test('re-importing keeps createdAt and replaces the rest', async () => {
    const ref = { ...acme, userId: 'reimport' };
    const before = await authpipe.importConnection({ ...ref, accessToken: 'a', scopes: ['x'] });
    const after = await authpipe.importConnection({ ...ref, apiKey: 'k' });
    expect(after.createdAt).toEqual(before.createdAt);
    expect(after).toMatchObject({ type: 'api_key', scopes: [], hasRefreshToken: false });
  });
});

describe('listConnections', () => {
  const authpipe = open({ store: testStore(), masterKey: newKey() });

  beforeAll(async () => {
    const inputs = [];
    for (const tenantId of ['t1', 't2']) {
      for (let i = 0; i < 25; i++) {
        inputs.push({ provider: i % 2 ? 'attio' : 'hubspot', tenantId, userId: `u${String(i).padStart(2, '0')}`, accessToken: opaque() });
      }
    }
    await authpipe.importConnections(inputs);
  });

  test('pages through everything in order, exactly once', async () => {
    const seen: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const page = await authpipe.listConnections({ limit: 7, cursor });
      seen.push(...page.connections.map((c) => `${c.tenantId}/${c.provider}/${c.userId}`));
      cursor = page.nextCursor ?? undefined;
      pages++;
    } while (cursor);
    expect(pages).toBe(8);
    expect(seen).toHaveLength(50);
    expect([...seen].sort()).toEqual(seen);
    expect(new Set(seen).size).toBe(50);
  });

  test('filters by tenant, provider and status', async () => {
    const page = await authpipe.listConnections({ tenantId: 't2', provider: 'attio' });
    expect(page.connections).toHaveLength(12);
    expect(page.connections.every((c) => c.tenantId === 't2' && c.provider === 'attio')).toBe(true);
    expect(page.nextCursor).toBeNull();
    expect((await authpipe.listConnections({ status: 'revoked' })).connections).toHaveLength(0);
  });

  test('rejects bad paging arguments', async () => {
    await rejection(authpipe.listConnections({ limit: 0 }), 'INVALID_ARGUMENT');
    await rejection(authpipe.listConnections({ cursor: 'not-a-cursor' }), 'INVALID_ARGUMENT');
    await rejection(authpipe.listConnections({ status: 'sleeping' as never }), 'INVALID_ARGUMENT');
    await rejection(authpipe.listConnections({ provider: 'nope' }), 'UNKNOWN_PROVIDER');
  });
});

describe('secrets', () => {
  const authpipe = open({ store: testStore(), masterKey: newKey() });

  test('are stored per tenant and provider, and deleted', async () => {
    await authpipe.setSecret({ tenantId: 't', name: 'webhook', provider: 'attio', value: 'whsec_1' });
    await authpipe.setSecret({ tenantId: 't', name: 'webhook', value: 'tenant-wide' });
    expect(await authpipe.getSecret({ tenantId: 't', name: 'webhook', provider: 'attio' })).toBe('whsec_1');
    expect(await authpipe.getSecret({ tenantId: 't', name: 'webhook' })).toBe('tenant-wide');
    await rejection(authpipe.getSecret({ tenantId: 'other', name: 'webhook' }), 'SECRET_NOT_FOUND');
    expect(await authpipe.deleteSecret({ tenantId: 't', name: 'webhook' })).toBe(true);
    await rejection(authpipe.getSecret({ tenantId: 't', name: 'webhook' }), 'SECRET_NOT_FOUND');
  });
});

describe('instances on one store share one engine', () => {
  const dir = tempDir();
  const masterKey = newKey();
  const store = join(dir, 'shared.db');
  const a = open({ store, masterKey });
  const b = open({ store, masterKey });

  test('an import through one instance is served by the other at once, from the shared cache', async () => {
    expect((await a.stats()).engineId).toBe((await b.stats()).engineId);
    await a.importConnection({ ...acme, accessToken: 'v1' });
    const readsBefore = (await b.stats()).storeReads;
    expect((await b.getCredential(acme)).credential).toBe('v1');
    await a.importConnection({ ...acme, accessToken: 'v2' });
    expect((await b.getCredential(acme)).credential).toBe('v2'); // b's memo saw the generation change
    expect((await b.stats()).storeReads).toBe(readsBefore);
  });

  test('an instance with other master keys is refused', async () => {
    const c = new Authpipe({ store, masterKey: newKey() });
    await rejection(c.ready(), 'INVALID_ARGUMENT');
    await c.close();
  });

  test('a closed instance refuses calls; the others carry on', async () => {
    const c = new Authpipe({ store, masterKey });
    await c.ready();
    await c.close();
    await rejection(c.getCredential(acme), 'CLOSED');
    expect((await a.getCredential(acme)).credential).toBe('v2');
  });

  test('a store reopened after every instance closed serves what was stored', async () => {
    const other = join(dir, 'reopen.db');
    const first = new Authpipe({ store: other, masterKey });
    await first.importConnection({ ...acme, accessToken: 'persisted' });
    const engineId = (await first.stats()).engineId;
    await first.close();
    const second = new Authpipe({ store: other, masterKey });
    expect((await second.getCredential(acme)).credential).toBe('persisted');
    expect((await second.stats()).engineId).not.toBe(engineId);
    await second.close();
  });
});
