import express from 'express';
import Fastify from 'fastify';
import { createServer, type Server } from 'node:http';
import { Authpipe, type ConnectResultMessage } from '..';
import { createSandbox, type Sandbox } from '../dist/testing';
import { browse, closeServer, listenOnLoopback, newKey, posted, redirectedTo, rejection, testStore } from './helpers';

const who = { provider: 'attio', tenantId: 'org_acme', userId: 'user_1' };

let sandbox: Sandbox;
let app: Server;
let appOrigin: string;
let authpipe: Authpipe;
let redirectUri: string;

/** The app: Authpipe's handler mounted at /authpipe on a loopback server. */
beforeAll(async () => {
  sandbox = await createSandbox({ provider: 'attio', workspace: { name: 'Acme Corp', slug: 'acme' } });
  app = createServer();
  appOrigin = await listenOnLoopback(app);
  redirectUri = `${appOrigin}/authpipe/callback/attio`;
  authpipe = new Authpipe({
    store: testStore(),
    masterKey: newKey(),
    httpTimeoutMs: 1000,
    providers: { attio: sandbox.providerConfig({ redirectUri, requiredScopes: ['record_permission:read-write'] }) },
  });
  const handle = authpipe.handler({ appOrigin });
  app.on('request', handle);
});

afterAll(async () => {
  await authpipe.close();
  await closeServer(app);
  await sandbox.close();
});

/** The callback URL the sandbox sends the browser to, after consenting. */
async function consented(user = who): Promise<string> {
  const { url } = await authpipe.startConnect(user);
  return sandbox.consent(url);
}

describe('startConnect and handleCallback', () => {
  test('a whole connect: PKCE, code exchange, /v2/self, then credentials', async () => {
    const { url, state, expiresAt } = await authpipe.startConnect(who);
    const authorize = new URL(url);
    expect(authorize.origin + authorize.pathname).toBe(sandbox.authorizeUrl);
    expect(Object.fromEntries(authorize.searchParams)).toEqual({
      response_type: 'code',
      client_id: sandbox.clientId,
      redirect_uri: redirectUri,
      state,
      code_challenge: expect.stringMatching(/^[A-Za-z0-9_-]{43}$/),
      code_challenge_method: 'S256',
    }); // and no scope parameter: Attio takes scopes from the app's settings
    expect(state).toMatch(/^[A-Za-z0-9_-]{43}$/); // 256 bits
    expect(expiresAt.getTime() - Date.now()).toBeGreaterThan(9 * 60_000);

    const connection = await authpipe.handleCallback({ url: await sandbox.consent(url) });
    expect(connection).toMatchObject({
      ...who,
      type: 'oauth2',
      status: 'active',
      hasRefreshToken: false,
      expiresAt: null, // Attio tokens never expire
      account: { name: 'Acme Corp' },
    });
    expect(connection.account?.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(connection.scopes).toEqual(['record_permission:read-write', 'object_configuration:read', 'user_management:read']);
    expect(JSON.stringify(connection)).not.toContain(sandbox.issuedTokens.at(-1));

    const { credential, extras } = await authpipe.getCredential(who);
    expect(credential).toBe(sandbox.issuedTokens.at(-1));
    expect(extras).toMatchObject({ workspace_slug: 'acme', client_id: sandbox.clientId });
    const self = await fetch(sandbox.identityUrl, { headers: { authorization: `Bearer ${credential}` } });
    expect(await self.json()).toMatchObject({ active: true, workspace_name: 'Acme Corp' });
  });

  test('a callback can be handled once', async () => {
    const callback = await consented();
    await authpipe.handleCallback({ url: callback });
    await rejection(authpipe.handleCallback({ url: callback }), 'STATE_ALREADY_USED');
  });

  test('the callback forms: url, query string, parameters, form body', async () => {
    for (const form of ['url', 'query', 'params', 'body'] as const) {
      const callback = new URL(await consented());
      const input =
        form === 'url' ? { url: callback.href }
        : form === 'query' ? { query: callback.search }
        : form === 'params' ? { query: Object.fromEntries(callback.searchParams) }
        : { body: callback.searchParams.toString() };
      await expect(authpipe.handleCallback(input)).resolves.toMatchObject({ status: 'active' });
    }
  });

  test('each failure has its own code, and never a secret in its message', async () => {
    const denied = await sandbox.consent((await authpipe.startConnect(who)).url, { deny: true });
    await rejection(authpipe.handleCallback({ url: denied }), 'AUTHORIZATION_DENIED');
    await rejection(authpipe.handleCallback({ query: { error: 'server_error', state: 'x' } }), 'AUTHORIZATION_FAILED');
    await rejection(authpipe.handleCallback({ query: { code: 'c' } }), 'INVALID_STATE');
    await rejection(authpipe.handleCallback({ query: { code: 'c', state: 'forged-state' } }), 'INVALID_STATE');

    const other = new URL(await consented());
    await rejection(authpipe.handleCallback({ url: other.href }, { provider: 'hubspot' }), 'STATE_PROVIDER_MISMATCH');

    const tampered = new URL(await consented());
    tampered.searchParams.set('code', 'not-the-code');
    const err = await rejection(authpipe.handleCallback({ url: tampered.href }), 'CODE_EXCHANGE_FAILED');
    expect(err.message).toContain('invalid_grant');
    expect(err.message).not.toContain(sandbox.clientSecret);

    const missingCode = new URL(await consented());
    missingCode.searchParams.delete('code');
    await rejection(authpipe.handleCallback({ url: missingCode.href }), 'PROVIDER_ERROR');

    sandbox.failNext('token', 1, 200); // a 200 that is not a token response
    expect((await rejection(authpipe.handleCallback({ url: await consented() }), 'PROVIDER_ERROR')).message).toContain('no usable access_token');

    sandbox.failNext('token', 1, 502);
    expect((await rejection(authpipe.handleCallback({ url: await consented() }), 'PROVIDER_ERROR')).message).toContain('HTTP 502');

    sandbox.delay('token', 3000);
    try {
      await rejection(authpipe.handleCallback({ url: await consented() }), 'PROVIDER_TIMEOUT');
    } finally {
      sandbox.delay('token', 0);
    }

    sandbox.failNext('identity', 1, 500);
    await rejection(authpipe.handleCallback({ url: await consented() }), 'PROVIDER_ERROR');
  });

  test('a connection without a required scope is refused', async () => {
    const picky = new Authpipe({
      store: testStore(),
      masterKey: newKey(),
      providers: { attio: sandbox.providerConfig({ redirectUri, requiredScopes: ['webhook:read-write'] }) },
    });
    const { url } = await picky.startConnect(who);
    const err = await rejection(picky.handleCallback({ url: await sandbox.consent(url) }), 'INSUFFICIENT_SCOPE');
    expect(err.message).toContain('webhook:read-write');
    await rejection(picky.getCredential(who), 'CONNECTION_NOT_FOUND');
    await picky.close();
  });

  test('iss is checked when the provider has an issuer (RFC 9207)', async () => {
    const strict = new Authpipe({
      store: testStore(),
      masterKey: newKey(),
      providers: { attio: sandbox.providerConfig({ redirectUri, issuer: sandbox.origin, issParameterSupported: true }) },
    });
    const withIss = async (iss: string | null) => {
      const callback = new URL(await sandbox.consent((await strict.startConnect(who)).url));
      if (iss !== null) callback.searchParams.set('iss', iss);
      return strict.handleCallback({ url: callback.href });
    };
    await rejection(withIss('https://evil.example'), 'ISSUER_MISMATCH');
    await rejection(withIss(null), 'ISSUER_MISMATCH');
    await expect(withIss(sandbox.origin)).resolves.toMatchObject({ status: 'active' });
    await strict.close();
  });

  test('redirect URIs must be registered, exactly', async () => {
    await rejection(authpipe.startConnect({ ...who, redirectUri: 'https://evil.example/callback' }), 'INVALID_ARGUMENT');
    const unregistered = new Authpipe({
      store: testStore(),
      masterKey: newKey(),
      providers: { attio: { ...sandbox.providerConfig(), redirectUri: `${appOrigin}/not-registered` } },
    });
    const { url } = await unregistered.startConnect(who);
    await expect(sandbox.consent(url)).rejects.toThrow(/redirect_uri is not registered/);
    await unregistered.close();
  });

  test('endpoint overrides must be https, or http on loopback', () => {
    for (const authorizeUrl of ['http://attio.example/authorize', 'http://10.0.0.1/authorize', 'file:///etc/passwd']) {
      expect(() => new Authpipe({ store: testStore(), masterKey: newKey(), providers: { attio: { authorizeUrl } } })).toThrow(
        expect.objectContaining({ code: 'INVALID_ARGUMENT', message: expect.stringContaining('providers.attio.authorizeUrl must be an https URL') }),
      );
    }
  });

  test('deleteConnection reports that Attio has no revocation endpoint, and deletes', async () => {
    await authpipe.handleCallback({ url: await consented({ ...who, userId: 'to-delete' }) });
    expect(await authpipe.deleteConnection({ ...who, userId: 'to-delete' })).toEqual({ deleted: true, revocation: 'not_supported', revocationError: null });
    await rejection(authpipe.getCredential({ ...who, userId: 'to-delete' }), 'CONNECTION_NOT_FOUND');
  });
});

/** A browser, minus the browser: a cookie jar and manual redirects. */
describe('the HTTP handler', () => {
  async function startInBrowser(tenantId = 'org_acme', userId = 'user_h') {
    const { token } = await authpipe.createConnectSession({ tenantId, userId, providers: ['attio'] });
    const start = await browse(`${appOrigin}/authpipe/connect/attio?session=${token}`);
    expect(start.status).toBe(302);
    const cookie = start.setCookie[0]!.split(';')[0]!;
    return { start, cookie, callback: await sandbox.consent(start.location!) };
  }

  test('connect -> provider -> callback page that posts the result to the opener, without tokens', async () => {
    const { start, cookie, callback } = await startInBrowser();
    expect(start.location!.startsWith(sandbox.authorizeUrl)).toBe(true);
    expect(start.setCookie[0]).toMatch(/^authpipe_flow_[A-Za-z0-9_-]{22}=[A-Za-z0-9_-]{43}\.\.; Path=\/authpipe\/callback; Max-Age=900; HttpOnly; SameSite=Lax$/);
    expect(start.headers.get('referrer-policy')).toBe('no-referrer');

    const done = await browse(callback, cookie);
    expect(done.status).toBe(200);
    expect(done.headers.get('referrer-policy')).toBe('no-referrer');
    expect(done.headers.get('cache-control')).toBe('no-store');
    const nonce = /nonce="([^"]+)"/.exec(done.text)![1];
    expect(done.headers.get('content-security-policy')).toBe(
      `default-src 'none'; script-src 'nonce-${nonce}'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`,
    );
    expect(done.setCookie[0]).toMatch(/^authpipe_flow_[A-Za-z0-9_-]{22}=; Path=\/authpipe\/callback; Max-Age=0/);
    expect(done.text).toContain(`window.opener.postMessage(result, "${appOrigin}")`);
    expect(posted(done.text)).toMatchObject({ type: 'authpipe:connect', ok: true, connection: { provider: 'attio', tenantId: 'org_acme', userId: 'user_h', status: 'active' } });
    expect(done.text).not.toContain(sandbox.issuedTokens.at(-1));
    expect((await authpipe.getCredential({ provider: 'attio', tenantId: 'org_acme', userId: 'user_h' })).credential).toBe(sandbox.issuedTokens.at(-1));
  });

  test('the flow is bound to the browser that started it', async () => {
    const a = await startInBrowser('tenant_a', 'alice');
    const b = await startInBrowser('tenant_b', 'mallory');
    // Mallory's callback (state from another tenant's flow) in Alice's browser:
    const crossed = await browse(b.callback, a.cookie);
    expect(posted(crossed.text)).toMatchObject({ ok: false, error: { code: 'BROWSER_MISMATCH' } });
    expect(crossed.status).toBe(400);
    // No cookie at all:
    const a2 = await startInBrowser('tenant_a', 'alice');
    expect(posted((await browse(a2.callback)).text)).toMatchObject({ ok: false, error: { code: 'BROWSER_MISMATCH' } });
    // Each browser with its own flow:
    expect(posted((await browse(a.callback, a.cookie)).text)).toMatchObject({ ok: true, connection: { tenantId: 'tenant_a', userId: 'alice' } });
    await rejection(authpipe.getCredential({ provider: 'attio', tenantId: 'tenant_b', userId: 'mallory' }), 'CONNECTION_NOT_FOUND');
  });

  test('no parameter can redirect the browser elsewhere', async () => {
    const { token } = await authpipe.createConnectSession({ tenantId: 'org_acme', userId: 'user_r' });
    const evil = 'https://evil.example/steal';
    const start = await browse(`${appOrigin}/authpipe/connect/attio?session=${token}&redirect_uri=${encodeURIComponent(evil)}&returnTo=${encodeURIComponent(evil)}`);
    const authorize = new URL(start.location!);
    expect(authorize.searchParams.get('redirect_uri')).toBe(redirectUri);
    const cookie = start.setCookie[0]!.split(';')[0]!;
    const callback = new URL(await sandbox.consent(start.location!));
    for (const name of ['returnTo', 'return_to', 'redirect_uri', 'next', 'redirect']) callback.searchParams.set(name, evil);
    const done = await browse(callback.href, cookie);
    expect(posted(done.text).ok).toBe(true);
    expect(done.text).not.toContain('evil.example');
    const back = redirectedTo(done.text);
    expect(back.origin + back.pathname).toBe(`${appOrigin}/`);
    expect(back.searchParams.get('authpipe')).toBe('connected');
  });

  test('without a session or signed-in user, nothing starts', async () => {
    const res = await browse(`${appOrigin}/authpipe/connect/attio?session=forged`);
    expect(res.status).toBe(400);
    expect(posted(res.text)).toMatchObject({ ok: false, error: { code: 'SESSION_INVALID' } });
    const noSession = await browse(`${appOrigin}/authpipe/connect/attio`);
    expect(posted(noSession.text)).toMatchObject({ ok: false, error: { code: 'SESSION_INVALID' } });
    const { token } = await authpipe.createConnectSession({ tenantId: 't', userId: 'u', providers: ['hubspot'] });
    expect(posted((await browse(`${appOrigin}/authpipe/connect/attio?session=${token}`)).text)).toMatchObject({ ok: false, error: { code: 'SESSION_INVALID' } });
  });

  test('a callback can arrive as a form POST (as Copper sends it)', async () => {
    const { cookie, callback } = await startInBrowser('org_acme', 'user_post');
    const url = new URL(callback);
    const res = await fetch(url.origin + url.pathname, {
      method: 'POST',
      headers: { cookie, 'content-type': 'application/x-www-form-urlencoded' },
      body: url.searchParams.toString(),
    });
    expect(posted(await res.text())).toMatchObject({ ok: true, connection: { userId: 'user_post' } });
  });

  test('a connect session starts one flow, from the query, a POST form or a header', async () => {
    const session = () => authpipe.createConnectSession({ tenantId: 'org_acme', userId: 'user_once' }).then((s) => s.token);
    const token = await session();
    // Refused for a provider it does not allow (here: not even configured), it stays usable.
    const onlyAttio = (await authpipe.createConnectSession({ tenantId: 'org_acme', userId: 'user_once', providers: ['attio'] })).token;
    expect(posted((await browse(`${appOrigin}/authpipe/connect/hubspot?session=${onlyAttio}`)).text)).toMatchObject({ ok: false, error: { code: 'SESSION_INVALID' } });
    expect((await browse(`${appOrigin}/authpipe/connect/attio?session=${onlyAttio}`)).status).toBe(302);
    expect((await browse(`${appOrigin}/authpipe/connect/attio?session=${token}`)).status).toBe(302);
    const replay = await browse(`${appOrigin}/authpipe/connect/attio?session=${token}`);
    expect(replay.status).toBe(400);
    expect(posted(replay.text)).toMatchObject({ ok: false, error: { code: 'SESSION_INVALID' } });

    const form = await fetch(`${appOrigin}/authpipe/connect/attio`, {
      method: 'POST',
      redirect: 'manual',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ session: await session() }).toString(),
    });
    expect(form.status).toBe(302);
    expect(form.headers.get('location')!.startsWith(sandbox.authorizeUrl)).toBe(true);
    const header = await fetch(`${appOrigin}/authpipe/connect/attio`, { redirect: 'manual', headers: { 'authpipe-session': await session() } });
    expect(header.status).toBe(302);
    const twice = await fetch(`${appOrigin}/authpipe/connect/attio?session=${await session()}`, { redirect: 'manual', headers: { 'authpipe-session': await session() } });
    expect(twice.status).toBe(400);
    expect(posted(await twice.text())).toMatchObject({ ok: false, error: { code: 'INVALID_ARGUMENT' } });
    await rejection(authpipe.createConnectSession({ tenantId: 't', userId: 'u', ttlSeconds: 2 * 3600 }), 'INVALID_ARGUMENT');
  });

  test('over https the flow cookie is __Host- prefixed and Secure, and it is what the callback reads', async () => {
    const server = createServer();
    const origin = await listenOnLoopback(server);
    const instance = new Authpipe({ store: testStore(), masterKey: newKey(), providers: { attio: sandbox.providerConfig({ redirectUri: `${origin}/authpipe/callback/attio` }) } });
    // The app is https; TLS ends in front of it (and X-Forwarded-Proto is not passed on).
    server.on('request', instance.handler({ appOrigin: 'https://app.example.com' }));
    try {
      const { token } = await instance.createConnectSession({ tenantId: 'org_tls', userId: 'u' });
      const start = await browse(`${origin}/authpipe/connect/attio?session=${token}`);
      expect(start.setCookie[0]).toMatch(/^__Host-authpipe_flow_[A-Za-z0-9_-]{22}=[A-Za-z0-9_-]{43}\.\.; Path=\/; Max-Age=900; HttpOnly; Secure; SameSite=Lax$/);
      const cookie = start.setCookie[0]!.split(';')[0]!;
      const callback = await sandbox.consent(start.location!);
      const unprefixed = cookie.replace('__Host-', '');
      expect(posted((await browse(callback, unprefixed)).text)).toMatchObject({ ok: false, error: { code: 'BROWSER_MISMATCH' } });
      const done = await browse(callback, cookie);
      expect(posted(done.text)).toMatchObject({ ok: true, connection: { tenantId: 'org_tls' } });
      expect(done.setCookie[0]).toMatch(/^__Host-authpipe_flow_[A-Za-z0-9_-]{22}=; Path=\/; Max-Age=0; HttpOnly; Secure/);
    } finally {
      await instance.close();
      await closeServer(server);
    }
  });

  test('only the browser that started a flow can cancel it with error=', async () => {
    const { cookie, callback } = await startInBrowser('org_acme', 'user_cancel');
    const state = new URL(callback).searchParams.get('state')!;
    const forged = await browse(`${appOrigin}/authpipe/callback/attio?error=access_denied&state=${state}`);
    expect(posted(forged.text)).toMatchObject({ ok: false, error: { code: 'BROWSER_MISMATCH' } });
    expect(posted((await browse(callback, cookie)).text)).toMatchObject({ ok: true, connection: { userId: 'user_cancel' } });
    // A reload of the page afterwards (its cookie cleared by then) hears that it was used.
    expect(posted((await browse(callback)).text)).toMatchObject({ ok: false, error: { code: 'STATE_ALREADY_USED' } });
  });

  test('a parameter given twice is refused, and a body over 64 KiB is a 400', async () => {
    const { cookie, callback } = await startInBrowser('org_acme', 'user_dup');
    const doubled = new URL(callback);
    doubled.searchParams.append('state', 'another-state');
    const res = await browse(doubled.href, cookie);
    expect(res.status).toBe(400);
    expect(posted(res.text)).toMatchObject({ ok: false, error: { code: 'INVALID_ARGUMENT' } });
    await rejection(authpipe.handleCallback({ url: doubled.href }), 'INVALID_ARGUMENT');
    await rejection(authpipe.handleCallback({ query: `${doubled.search}&code=x` }), 'INVALID_ARGUMENT');
    // The flow was not spent by any of that.
    expect(posted((await browse(callback, cookie)).text)).toMatchObject({ ok: true });

    const big = await fetch(`${appOrigin}/authpipe/callback/attio`, {
      method: 'POST',
      headers: { cookie, 'content-type': 'application/x-www-form-urlencoded' },
      body: `state=x&pad=${'a'.repeat(100 * 1024)}`,
    });
    expect(big.status).toBe(400);
    expect(posted(await big.text())).toMatchObject({ ok: false, error: { code: 'INVALID_ARGUMENT' } });
  });

  test('the page shows our words for a code, never the provider\'s text', async () => {
    const said = 'Your admin disabled this app <b>call 555</b>';
    const res = await browse(`${appOrigin}/authpipe/callback?error=server_error&error_description=${encodeURIComponent(said)}&state=x`);
    expect(posted(res.text)).toEqual({ type: 'authpipe:connect', ok: false, error: { code: 'AUTHORIZATION_FAILED', message: 'The provider could not authorize the connection.' } });
    expect(res.text).not.toContain('admin disabled');
  });

  test('unknown routes are 404, malformed paths 400, and the page script cannot be broken out of', async () => {
    expect((await browse(`${appOrigin}/authpipe/nope`)).status).toBe(404);
    const malformed = await browse(`${appOrigin}/authpipe/connect/%E0%A4%A`);
    expect(malformed.status).toBe(400);
    expect(posted(malformed.text)).toMatchObject({ ok: false, error: { code: 'INVALID_ARGUMENT' } });
    const res = await browse(`${appOrigin}/authpipe/callback?error=${encodeURIComponent('</script><script>alert(1)</script>')}&state=x`);
    expect(res.text).not.toContain('<script>alert(1)');
    expect(posted(res.text)).toMatchObject({ ok: false, error: { code: 'AUTHORIZATION_FAILED' } });
  });
});

describe('the handler in Express and Fastify, and with resolveUser', () => {
  /** An Authpipe whose redirect URI points at `origin`, and its handler. */
  function instanceFor(origin: string, extra: Partial<Parameters<Authpipe['handler']>[0]> = {}) {
    const instance = new Authpipe({
      store: testStore(),
      masterKey: newKey(),
      providers: { attio: sandbox.providerConfig({ redirectUri: `${origin}/authpipe/callback/attio` }) },
    });
    return { instance, handle: instance.handler({ appOrigin: origin, ...extra }) };
  }

  test('Express: app.use("/authpipe", handle)', async () => {
    const server = createServer();
    const origin = await listenOnLoopback(server);
    const { instance, handle } = instanceFor(origin);
    const expressApp = express();
    expressApp.use('/authpipe', (req, res) => handle(req, res));
    server.on('request', expressApp);
    try {
      const result = await connectViaInstance(instance, origin);
      expect(result).toMatchObject({ ok: true, connection: { tenantId: 'org_fw', userId: 'express' } });
    } finally {
      await instance.close();
      await closeServer(server);
    }
  });

  test('Fastify: reply.hijack() and the raw request', async () => {
    const fastify = Fastify({ logger: false });
    const holder: { handle?: ReturnType<Authpipe['handler']> } = {};
    // As the README mounts it: form bodies pass unparsed to the handler, in this scope only.
    await fastify.register(async (scope) => {
      scope.addContentTypeParser('application/x-www-form-urlencoded', (_request, _payload, done) => done(null));
      scope.all('/authpipe/*', (request, reply) => {
        reply.hijack();
        holder.handle!(request.raw, reply.raw);
      });
    });
    const address = await fastify.listen({ port: 0, host: '127.0.0.1' });
    const origin = address.replace('localhost', '127.0.0.1');
    const { instance, handle } = instanceFor(origin);
    holder.handle = handle;
    try {
      const result = await connectViaInstance(instance, origin, 'fastify');
      expect(result).toMatchObject({ ok: true, connection: { tenantId: 'org_fw', userId: 'fastify' } });
    } finally {
      await instance.close();
      await fastify.close();
    }
  });

  test('resolveUser: the app says who is signed in, no session token needed', async () => {
    const server = createServer();
    const origin = await listenOnLoopback(server);
    const { instance, handle } = instanceFor(origin, {
      // The app's own session: here, a cookie naming the user.
      resolveUser: (req) => {
        const user = /app_user=([^;]+)/.exec(req.headers.cookie ?? '')?.[1];
        return user ? { tenantId: 'org_fw', userId: user } : null;
      },
    });
    server.on('request', handle);
    try {
      const start = await browse(`${origin}/authpipe/connect/attio`, 'app_user=resolved');
      const cookie = start.setCookie[0]!.split(';')[0]!;
      const callback = await sandbox.consent(start.location!);
      expect(posted((await browse(callback, cookie)).text)).toMatchObject({ ok: true, connection: { userId: 'resolved' } });
      expect(posted((await browse(`${origin}/authpipe/connect/attio`)).text)).toMatchObject({ ok: false, error: { code: 'SESSION_INVALID' } });
    } finally {
      await instance.close();
      await closeServer(server);
    }
  });

  async function connectViaInstance(instance: Authpipe, origin: string, userId = 'express'): Promise<ConnectResultMessage> {
    const { token } = await instance.createConnectSession({ tenantId: 'org_fw', userId });
    const start = await browse(`${origin}/authpipe/connect/attio?session=${token}`);
    expect(start.status).toBe(302);
    const cookie = start.setCookie[0]!.split(';')[0]!;
    const callback = await sandbox.consent(start.location!);
    return posted((await browse(callback, cookie)).text);
  }
});

describe('the sandbox controls', () => {
  test('revoke, uninstall, failures, rate limits', async () => {
    const box = await createSandbox({ provider: 'attio' });
    const instance = new Authpipe({ store: testStore(), masterKey: newKey(), providers: { attio: box.providerConfig({ redirectUri }) } });
    const self = (token: string) => fetch(box.identityUrl, { headers: { authorization: `Bearer ${token}` } });
    try {
      for (const userId of ['a', 'b']) {
        const { url } = await instance.startConnect({ ...who, userId });
        await instance.handleCallback({ url: await box.consent(url) });
      }
      const [a, b] = box.issuedTokens as [string, string];
      box.revoke(a);
      expect(await (await self(a)).json()).toEqual({ active: false });
      expect(await (await self(b)).json()).toMatchObject({ active: true });
      expect((await self('not-a-token')).status).toBe(401);

      const resetAt = new Date(Date.now() + 60_000);
      box.rateLimit('identity', 1, resetAt);
      const limited = await self(b);
      expect(limited.status).toBe(429);
      expect(limited.headers.get('retry-after')).toBe(resetAt.toUTCString());
      expect(await limited.json()).toMatchObject({ type: 'rate_limit_error', code: 'rate_limit_exceeded' });
      box.failNext('identity', 2, 503);
      expect([(await self(b)).status, (await self(b)).status, (await self(b)).status]).toEqual([503, 503, 200]);

      box.uninstall();
      expect(await (await self(b)).json()).toEqual({ active: false });
      expect(box.requests.filter((r) => r.path === '/v2/self').length).toBeGreaterThan(5);
    } finally {
      await instance.close();
      await box.close();
    }
  });
});
