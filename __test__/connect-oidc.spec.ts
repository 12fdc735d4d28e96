// End to end against a real, certified authorization server (panva's oidc-provider, run in a
// child process on loopback): discovery, code + PKCE (required by the server), RFC 9207 `iss`,
// client_secret_basic, then credentials the server's introspection accepts; and the handler in
// Express, Hono (fetchHandler) and Fastify through the same flow.
import { getRequestListener } from '@hono/node-server';
import express from 'express';
import Fastify, { type FastifyInstance } from 'fastify';
import { Hono } from 'hono';
import { createServer, type RequestListener, type Server } from 'node:http';
import { Authpipe } from '..';
import { closeServer, connectWithoutJavaScript, listenOnLoopback, newKey, posted, rejection, testStore } from './helpers';
import { followUntil, startOidcProvider, type OidcProvider } from './support/oidc';

let app: Server;
let appOrigin: string;
let oidc: OidcProvider;
let authpipe: Authpipe;

beforeAll(async () => {
  app = createServer();
  appOrigin = await listenOnLoopback(app);
  oidc = await startOidcProvider({ redirectUris: [`${appOrigin}/authpipe/callback/oidc`] });
  authpipe = new Authpipe({
    store: testStore(),
    masterKey: newKey(),
    providers: {
      // Only an issuer: endpoints, PKCE, client authentication and iss support are discovered.
      oidc: {
        issuer: oidc.issuer,
        clientId: oidc.clientId,
        clientSecret: oidc.clientSecret,
        redirectUri: `${appOrigin}/authpipe/callback/oidc`,
        scopes: ['api:read', 'offline_access'],
      },
    },
  });
  app.on('request', authpipe.handler({ appOrigin }));
  await authpipe.ready();
});

afterAll(async () => {
  await authpipe.close();
  await closeServer(app);
  await oidc.close();
});

const who = { provider: 'oidc', tenantId: 'org_acme', userId: 'user_1' };

test('connect through the handler, then serve a token the provider accepts', async () => {
  const { token } = await authpipe.createConnectSession({ tenantId: who.tenantId, userId: who.userId });
  const start = await fetch(`${appOrigin}/authpipe/connect/oidc?session=${token}`, { redirect: 'manual' });
  expect(start.status).toBe(302);
  const authorize = new URL(start.headers.get('location')!);
  expect(authorize.origin).toBe(oidc.issuer);
  expect(authorize.searchParams.get('code_challenge_method')).toBe('S256');
  const cookie = start.headers.getSetCookie()[0]!.split(';')[0]!;

  const callback = await followUntil(authorize.href, appOrigin);
  expect(new URL(callback).searchParams.get('iss')).toBe(oidc.issuer); // RFC 9207, sent by the server
  const page = await (await fetch(callback, { headers: { cookie } })).text();
  expect(posted(page)).toMatchObject({ ok: true, connection: { provider: 'oidc', tenantId: 'org_acme', userId: 'user_1', status: 'active' } });

  const connection = await authpipe.getConnection(who);
  expect(connection.hasRefreshToken).toBe(true);
  expect(connection.expiresAt!.getTime()).toBeGreaterThan(Date.now());
  const { credential } = await authpipe.getCredential(who);
  expect(await oidc.introspect(credential)).toMatchObject({ active: true, client_id: oidc.clientId, scope: expect.stringContaining('api:read') });
});

test('deleteConnection revokes the grant at the provider (RFC 7009), then deletes', async () => {
  const ref = { ...who, userId: 'user_revoke' };
  const { url } = await authpipe.startConnect(ref);
  await authpipe.handleCallback({ url: await followUntil(url, appOrigin) });
  const { credential } = await authpipe.getCredential(ref);
  expect((await oidc.introspect(credential)).active).toBe(true);
  expect(await authpipe.deleteConnection(ref)).toEqual({ deleted: true, revocation: 'revoked', revocationError: null });
  expect((await oidc.introspect(credential)).active).toBe(false); // the refresh token's grant took its access token with it
  await rejection(authpipe.getCredential(ref), 'CONNECTION_NOT_FOUND');
});

test('a callback whose iss is not the issuer is refused before the code is redeemed', async () => {
  const { url } = await authpipe.startConnect({ ...who, userId: 'user_2' });
  const callback = new URL(await followUntil(url, appOrigin));
  const genuineIss = callback.searchParams.get('iss')!;
  callback.searchParams.set('iss', 'https://attacker.example');
  await rejection(authpipe.handleCallback({ url: callback.href }), 'ISSUER_MISMATCH');
  // The code was not redeemed with the wrong iss, but the state is spent: no second try.
  callback.searchParams.set('iss', genuineIss);
  await rejection(authpipe.handleCallback({ url: callback.href }), 'STATE_ALREADY_USED');
});

test('an http issuer off loopback is refused', () => {
  expect(() => new Authpipe({ store: testStore(), masterKey: newKey(), providers: { x: { issuer: 'http://idp.example' } } })).toThrow(
    expect.objectContaining({ code: 'INVALID_ARGUMENT' }),
  );
});

test('discovery refuses metadata that names another issuer', async () => {
  const impostor = createServer((_req, res) => {
    // Metadata copied from the real server: its issuer is not this server's URL.
    fetch(`${oidc.issuer}/.well-known/openid-configuration`).then(async (r) => res.writeHead(200, { 'content-type': 'application/json' }).end(await r.text()));
  });
  const issuer = await listenOnLoopback(impostor);
  const bad = new Authpipe({ store: testStore(), masterKey: newKey(), providers: { x: { issuer } } });
  const err = await rejection(bad.ready(), 'PROVIDER_ERROR');
  expect(err.message).toContain(`names issuer '${oidc.issuer}'`);
  await bad.close();
  await closeServer(impostor);
});

test('discovery of an issuer that serves no metadata fails at ready()', async () => {
  const bad = new Authpipe({ store: testStore(), masterKey: newKey(), providers: { x: { issuer: `${appOrigin}/no-such-issuer` } } });
  await rejection(bad.ready(), 'PROVIDER_ERROR');
  await bad.close();
});

test('discovery stops reading a metadata document past 1 MiB', async () => {
  // A document that never ends (64 MiB of whitespace before anything), chunked: no
  // Content-Length to refuse it by. Counts what it managed to write before we hung up.
  let written = 0;
  let finished = false;
  const endless = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    const chunk = Buffer.alloc(64 * 1024, 0x20);
    const pump = () => {
      while (written < 64 * 1024 * 1024) {
        written += chunk.length;
        if (!res.write(chunk)) return void res.once('drain', pump);
      }
      finished = true;
      res.end('{}');
    };
    res.on('close', () => res.removeAllListeners('drain'));
    pump();
  });
  const issuer = await listenOnLoopback(endless);
  const bad = new Authpipe({ store: testStore(), masterKey: newKey(), providers: { x: { issuer } } });
  const err = await rejection(bad.ready(), 'PROVIDER_ERROR');
  expect(err.message).toContain('is not authorization server metadata');
  expect(finished).toBe(false);
  // 1 MiB read, plus what the sockets' buffers took on both sides.
  expect(written).toBeLessThan(16 * 1024 * 1024);
  await bad.close();
  await closeServer(endless);
});

describe('the handler in each stack, against oidc-provider, to a token it accepts', () => {
  // Each stack on its own port, all registered with one oidc-provider before it starts.
  type Mount = (authpipe: Authpipe, origin: string) => RequestListener;
  const stacks: Record<string, Mount> = {
    express: (instance, origin) => express().use('/authpipe', instance.handler({ appOrigin: origin })),
    hono: (instance, origin) => {
      const handle = instance.fetchHandler({ appOrigin: origin });
      return getRequestListener(new Hono().all('/authpipe/*', (c) => handle(c.req.raw)).fetch);
    },
  };
  const servers = new Map<string, { server: Server; origin: string }>();
  let fastify: FastifyInstance;
  let fastifyOrigin: string;
  let fastifyHandler: ReturnType<Authpipe['handler']> | undefined;
  let provider: OidcProvider;

  beforeAll(async () => {
    for (const name of Object.keys(stacks)) {
      const server = createServer();
      servers.set(name, { server, origin: await listenOnLoopback(server) });
    }
    // Fastify owns its server: the handler gets the raw request and response after hijack().
    fastify = Fastify({ logger: false });
    await fastify.register(async (scope) => {
      // The handler reads form bodies itself: Fastify lets them through unparsed, in this scope only.
      scope.addContentTypeParser('application/x-www-form-urlencoded', (_request, _payload, done) => done(null));
      scope.all('/authpipe/*', (request, reply) => {
        reply.hijack();
        fastifyHandler!(request.raw, reply.raw);
      });
    });
    fastifyOrigin = (await fastify.listen({ port: 0, host: '127.0.0.1' })).replace('localhost', '127.0.0.1');
    const origins = [...[...servers.values()].map((s) => s.origin), fastifyOrigin];
    provider = await startOidcProvider({ redirectUris: origins.map((origin) => `${origin}/authpipe/callback/oidc`) });
  });
  afterAll(async () => {
    for (const { server } of servers.values()) await closeServer(server);
    await fastify.close();
    await provider.close();
  });

  /** The flow as `<ConnectButton>` starts it: a form POST of the session to the connect route. */
  async function connectThrough(instance: Authpipe, origin: string, userId: string) {
    const { token } = await instance.createConnectSession({ tenantId: 'org_stack', userId });
    const { html } = await connectWithoutJavaScript(origin, 'oidc', token, (authorize) => followUntil(authorize.href, origin), {});
    expect(posted(html)).toMatchObject({ ok: true, connection: { provider: 'oidc', tenantId: 'org_stack', userId } });
    const { credential } = await instance.getCredential({ provider: 'oidc', tenantId: 'org_stack', userId });
    expect(await provider.introspect(credential)).toMatchObject({ active: true });
  }

  test.each(['express', 'hono', 'fastify'])('%s', async (name) => {
    const origin = name === 'fastify' ? fastifyOrigin : servers.get(name)!.origin;
    const instance = new Authpipe({ store: testStore(), masterKey: newKey(), providers: { oidc: provider.providerConfig(`${origin}/authpipe/callback/oidc`) } });
    try {
      if (name === 'fastify') fastifyHandler = instance.handler({ appOrigin: origin });
      else servers.get(name)!.server.on('request', stacks[name]!(instance, origin));
      await connectThrough(instance, origin, name);
    } finally {
      await instance.close();
    }
  });
});
