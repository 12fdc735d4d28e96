// The planted-secret scan's scenarios (secret-scan.spec.ts), in a process of their own so that
// the spec can read everything it wrote to stdout and stderr.
//
// Every secret here is planted: tokens, codes, client secrets, API keys, webhook secrets and
// master keys made up as `PLANTED-<kind>-<random>` (master keys: random bytes). A local provider
// issues the planted tokens and codes, and answers failures by echoing every value it was sent.
// Every scenario drives the library through one path; everything the library lets out is
// recorded: every value an Authpipe method returns, resolves or rejects with (all but the
// credentials of getCredential and the value of getSecret, which are checked here and kept
// nowhere), every event, the handler's responses (status, headers, body). The values the
// library itself makes that must stay where it puts them (flow state, connect session token,
// the browser binding in the flow cookie, the PKCE verifier) are reported as "generated", each
// with the outputs it may appear in. The spec then scans all of it, stdout, stderr and the
// store, for every value in every encoding.
//
// Every instance logs to a real pino logger at level trace, writing to the file `log`, which the
// spec scans with the rest.
//
// Usage: node secret-scan-child.js <config.json> (config: { store, results, log, snapshots? }); writes
// the results JSON to `results` and exits 0 once every scenario ran. With `snapshots`, every
// file of the SQLite store's directory is copied there after each scenario while the store is
// open (the WAL and shared-memory files exist only then).
'use strict';
const { createHmac, randomBytes } = require('node:crypto');
const { createServer } = require('node:http');
const { copyFileSync, mkdirSync, readdirSync, writeFileSync } = require('node:fs');
const { dirname, join } = require('node:path');
const { inspect } = require('node:util');
const pino = require('pino');
const { Authpipe, AuthpipeError } = require('../..');
const { CONNECTION_EVENT_NAMES } = require('../../dist/generated');

const config = JSON.parse(require('node:fs').readFileSync(process.argv[2], 'utf8'));
const HTTP_TIMEOUT_MS = 1500;

// ---------------------------------------------------------------------------------------------
// Planted and generated values, and the outputs recorded

/** @type {Array<{ kind: string, value: string, core: string, bytes?: boolean }>} */
const planted = [];
/** @type {Array<{ kind: string, value: string }>} */
const generated = [];
/** @type {Array<{ where: string, text: string, allows: string[] }>} */
const outputs = [];

const BASE62 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
function randomCore(length) {
  return [...randomBytes(length)].map((b) => BASE62[b % 62]).join('');
}

/**
 * Characters each kind of value ends with, so that its encodings differ from it: `+/~` change
 * under URL encoding, `"` and `\` under JSON escaping and Rust's `{:?}`, `é` under ASCII-only
 * escaping and Latin-1. Tokens keep to RFC 6750's b64token characters; what goes into an HTTP
 * header stays ASCII.
 */
const SUFFIX = {
  access_token: '+/~',
  refresh_token: '+/~',
  code: '~-_',
  client_secret: '+/"\\',
  api_key: '+/"\\',
  secret_value: '+/"\\é',
  webhook_secret: '+/"\\é',
  bad_input: '+/"\\',
};

/** A new planted value of `kind`: `PLANTED-<kind>-<24 random characters><suffix>`. */
function plant(kind) {
  const core = randomCore(24);
  const value = `PLANTED-${kind}-${core}${SUFFIX[kind] ?? ''}`;
  planted.push({ kind, value, core });
  return value;
}

/** A planted master key: 32 random bytes, as base64 or hex (the spec scans for the bytes in every spelling). */
function plantMasterKey(spelling) {
  const bytes = randomBytes(32);
  const value = spelling === 'hex' ? bytes.toString('hex') : bytes.toString('base64');
  planted.push({ kind: 'master_key', value: bytes.toString('base64'), core: '', bytes: true });
  return value;
}

/** A secret the library made: scanned for everywhere but the outputs whose `allows` name its kind. */
function noteGenerated(kind, value) {
  if (value && !generated.some((g) => g.value === value)) generated.push({ kind, value });
}

/** Records an output: util.inspect (everything, hidden too), JSON, and an error's message, stack and causes. */
function record(where, value, allows = []) {
  const texts = [inspect(value, { depth: Infinity, showHidden: true, getters: true, maxArrayLength: Infinity, maxStringLength: Infinity })];
  try {
    texts.push(String(JSON.stringify(value)));
  } catch (err) {
    texts.push(`(not JSON: ${err.message})`);
  }
  for (let e = value, depth = 0; e instanceof Error && depth < 10; e = e.cause, depth++) {
    texts.push(String(e), e.message, String(e.stack));
  }
  outputs.push({ where, text: texts.join('\n'), allows });
}

/** The Authpipe methods the scenarios called (the spec checks that none is left out). */
const called = new Set();

/** What each method's result may carry by design (besides nothing). */
const RESULT_ALLOWS = { startConnect: ['state'], createConnectSession: ['session'] };
/** Return values exempt from the scan: where the secrets are meant to come out. */
const EXEMPT = new Set(['getCredential', 'getSecret']);

/**
 * `authpipe` with every method call recorded: what it returns or resolves with (but for
 * {@link EXEMPT}), and what it throws or rejects with. Nothing a scenario calls escapes it.
 */
function instrument(authpipe) {
  return new Proxy(authpipe, {
    get(target, prop) {
      const member = Reflect.get(target, prop, target);
      if (typeof member !== 'function' || typeof prop !== 'string') return member;
      return (...args) => {
        called.add(prop);
        const where = `${prop}()`;
        const allows = RESULT_ALLOWS[prop] ?? [];
        const done = (result) => {
          if (!EXEMPT.has(prop)) record(where, result, allows);
          if (prop === 'startConnect') noteGenerated('state', result.state);
          if (prop === 'createConnectSession') noteGenerated('session', result.token);
          return result;
        };
        let result;
        try {
          result = member.apply(target, args);
        } catch (err) {
          record(`${where} threw`, err);
          throw err;
        }
        if (result && typeof result.then === 'function') {
          return result.then(done, (err) => {
            record(`${where} rejected`, err);
            throw err;
          });
        }
        return result === target ? result : done(result);
      };
    },
  });
}

// ---------------------------------------------------------------------------------------------
// The provider: issues planted codes and tokens, echoes what it was sent into its failures

/** Values the provider receives that are public: the protocol's words, ids, the redirect URI. */
const PUBLIC = new Set(['authorization_code', 'refresh_token', 'access_token', 'S256', 'code', 'read', 'write', 'read write']);

/**
 * How the provider answers, by name. `echo` holds everything the request carried: `values`
 * (each parameter, the Authorization header and its parts), `text` (all of them quoted, raw,
 * percent-encoded and JSON-escaped, as echoing endpoints write them) and `header` (the same,
 * safe for an HTTP header).
 */
const ANSWERS = {
  ok: () => ({ status: 200, json: {} }),
  invalid_grant_echo: (echo) => ({ status: 400, json: { error: 'invalid_grant', error_description: echo.text } }),
  invalid_client_401: (echo) => ({
    status: 401,
    headers: { 'www-authenticate': `Basic realm="token", error="invalid_client", error_description="${echo.header}"` },
    json: { error: 'invalid_client', error_description: echo.text },
  }),
  server_error_500_html: (echo) => ({ status: 500, headers: { 'content-type': 'text/html', 'x-echo': echo.header }, raw: `<html><body><h1>Error</h1><pre>${echo.text}</pre></body></html>` }),
  error_code_is_a_sent_value_503: (echo) => ({ status: 503, json: { error: echo.values[0] ?? 'x', error_description: echo.text } }),
  rate_limited_429: (echo) => ({ status: 429, headers: { 'retry-after': echo.values[0] ?? '1' }, json: { error: 'rate_limited', error_description: echo.text } }),
  malformed_json_200: (echo) => ({ status: 200, raw: `{"access_token": ${JSON.stringify(echo.values[0] ?? '')}, "echo": ${JSON.stringify(echo.text)}` }),
  not_json_200: (echo) => ({ status: 200, headers: { 'content-type': 'text/plain' }, raw: echo.text }),
  no_access_token_200: (echo) => ({ status: 200, json: { token_type: 'bearer', refresh_token: echo.values[0], echo: echo.text } }),
  redirect_307: (echo) => ({ status: 307, headers: { location: `http://127.0.0.1:9/elsewhere?${echo.query}` }, raw: '' }),
  oversized_200: (echo) => ({ status: 200, raw: `{"error_description": ${JSON.stringify(echo.text.repeat(Math.ceil(1.1e6 / Math.max(echo.text.length, 1))))}}` }),
  granted_scope_echo_200: (echo) => ({ status: 200, json: { ...issue(new URLSearchParams({ grant_type: 'refresh_token' })), scope: `read ${echo.values.join(' ')}` } }),
  reset: () => ({ reset: true }),
  timeout: () => ({ hold: true }),
};

/** The answers that echo into a success (the token endpoint's granted scopes). */
const SUCCESS_ECHOES = ['granted_scope_echo_200'];
/** The failure answers every endpoint is tried with. */
const FAILURES = Object.keys(ANSWERS).filter((name) => name !== 'ok' && !SUCCESS_ECHOES.includes(name));

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

async function startProvider() {
  /** Answers queued per endpoint: the next request to it takes the first. */
  const queue = { authorize: [], token: [], identity: [], revoke: [] };
  /** Every value the provider was sent (to show the scan that it was sent at all). */
  const received = new Set();
  const held = new Set();
  const server = createServer((req, res) => {
    void (async () => {
      const url = new URL(req.url ?? '/', 'http://provider.invalid');
      const [, prefix, endpoint] = url.pathname.split('/'); // /<provider>/<endpoint>
      if (endpoint === 'authorize') {
        const back = new URL(url.searchParams.get('redirect_uri'));
        const answer = queue.authorize.shift();
        if (answer === 'deny_echo') {
          back.searchParams.set('error', 'access_denied');
          back.searchParams.set('error_description', `denied ${[...url.searchParams.values()].join(' ')}`);
        } else {
          back.searchParams.set('code', plant('code'));
        }
        back.searchParams.set('state', url.searchParams.get('state'));
        res.writeHead(302, { location: back.href }).end();
        return;
      }
      const body = await readBody(req);
      const values = [];
      const keep = (v) => {
        if (v && !PUBLIC.has(v) && !v.startsWith('http://127.0.0.1:') && !v.startsWith('client-')) values.push(v);
      };
      for (const [, v] of url.searchParams) keep(v);
      const form = new URLSearchParams(body);
      for (const [k, v] of form) {
        keep(v);
        if (k === 'code_verifier') noteGenerated('pkce_verifier', v);
      }
      const authorization = req.headers.authorization;
      if (authorization) {
        keep(authorization);
        const [scheme, credentials = ''] = authorization.split(' ');
        keep(credentials);
        if (scheme === 'Basic') Buffer.from(credentials, 'base64').toString('utf8').split(':').map(decodeURIComponent).forEach(keep);
      }
      values.forEach((v) => received.add(v));
      const quoted = values.flatMap((v) => [`'${v}'`, `'${encodeURIComponent(v)}'`, JSON.stringify(v).slice(1, -1)]);
      const echo = {
        values,
        text: `ECHO you sent ${quoted.join(' and ')}`,
        header: `you sent ${values.map(encodeURIComponent).join(' ')}`,
        query: new URLSearchParams(values.map((v, i) => [`v${i}`, v])).toString(),
      };
      const kind = queue[endpoint]?.shift();
      let answer;
      if (kind) answer = ANSWERS[kind](echo);
      else if (endpoint === 'token') answer = { status: 200, json: issue(form) };
      else if (endpoint === 'identity') answer = { status: 200, json: identity(prefix, authorization) };
      else answer = { status: 200, json: {} };
      if (answer.reset) {
        req.socket.destroy();
        return;
      }
      if (answer.hold) {
        held.add(res);
        res.on('close', () => held.delete(res));
        return;
      }
      const headers = { 'content-type': 'application/json', ...answer.headers };
      res.writeHead(answer.status, headers).end(answer.raw ?? JSON.stringify(answer.json));
    })();
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const origin = `http://127.0.0.1:${server.address().port}`;
  return {
    origin,
    queue,
    received,
    async close() {
      for (const res of held) res.destroy();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** A token response with newly planted tokens. */
function issue(form) {
  if (form.get('grant_type') === 'refresh_token' || form.get('grant_type') === 'authorization_code') {
    return { access_token: plant('access_token'), refresh_token: plant('refresh_token'), token_type: 'bearer', expires_in: 3600, scope: 'read write' };
  }
  return { error: 'unsupported_grant_type' };
}

/** The identity answer: Attio's shape for `attio`, an empty object for the others. */
function identity(prefix, authorization) {
  if (prefix !== 'attio') return {};
  const echoing = identityEchoes.shift();
  const token = authorization?.split(' ')[1] ?? '';
  return {
    active: true,
    workspace_id: echoing ? token : 'ws_scan',
    workspace_name: echoing ? `Workspace of ${token}` : 'Scan Workspace',
    workspace_slug: 'scan',
    scope: echoing ? `record_permission:read ${token}` : 'record_permission:read',
    client_id: 'client-attio',
  };
}
/** Whether the next identity answers echo the bearer token into the account and scopes. */
const identityEchoes = [];

// ---------------------------------------------------------------------------------------------
// The app: an instance, its handler on a loopback server, a browser without JavaScript

async function browse(ctx, url, { cookie, allows = [], method = 'GET', body } = {}) {
  const res = await fetch(url, { method, body, redirect: 'manual', headers: cookie ? { cookie } : {} });
  const text = await res.text();
  const setCookie = res.headers.getSetCookie();
  for (const c of setCookie) {
    const value = c.split(';')[0].split('=').slice(1).join('=');
    if (value) noteGenerated('binding', value.split('.')[0]);
  }
  const location = res.headers.get('location');
  if (location) noteGenerated('state', new URL(location).searchParams.get('state'));
  const headers = [...res.headers].map(([k, v]) => `${k}: ${v}`).join('\n');
  // Set-Cookie carries the browser binding (an opaque value the handler made for this flow);
  // the redirect to the provider carries the flow's state. Nothing else may carry either.
  const carries = [...allows];
  if (setCookie.some((c) => !/^[^=]*=;/.test(c))) carries.push('binding');
  if (location) carries.push('state');
  ctx.outputs.push({ where: `handler ${method} ${new URL(url).pathname} -> ${res.status}`, text: `HTTP ${res.status}\n${headers}\n\n${text}`, allows: carries });
  return { status: res.status, location, cookies: setCookie.map((c) => c.split(';')[0]).join('; '), text };
}

/** The connect flow through the handler: connect route, the provider's consent, the callback page. */
async function connectThroughHandler(ctx, provider, who) {
  const { token } = await ctx.authpipe.createConnectSession(who);
  const start = await browse(ctx, `${ctx.appOrigin}/authpipe/connect/${provider}?session=${encodeURIComponent(token)}`);
  if (start.status !== 302) throw new Error(`connect answered ${start.status}`);
  const consent = await fetch(start.location, { redirect: 'manual' });
  const page = await browse(ctx, consent.headers.get('location'), { cookie: start.cookies });
  const match = /var result = (\{.*?\});\n/s.exec(page.text);
  return { status: page.status, result: match ? JSON.parse(match[1]) : undefined };
}

/** The same through startConnect and handleCallback, as an app without the handler does it. */
async function connectThroughApi(ctx, provider, who) {
  const { url } = await ctx.authpipe.startConnect({ provider, ...who });
  const consent = await fetch(url, { redirect: 'manual' });
  return ctx.authpipe.handleCallback({ url: consent.headers.get('location') }).then(
    (connection) => ({ ok: true, connection }),
    (error) => ({ ok: false, error }),
  );
}

/** Asserts that a credential is served and is `expected` (the value itself is kept nowhere). */
async function expectCredential(ctx, ref, expected) {
  const { credential } = await ctx.authpipe.getCredential(ref);
  if (credential !== expected) throw new Error(`getCredential served another credential for ${ref.tenantId}/${ref.userId}`);
}

/** An OAuth connection of newly planted tokens, valid for an hour. */
async function importPlanted(ctx, ref) {
  const accessToken = plant('access_token');
  const refreshToken = plant('refresh_token');
  await ctx.authpipe.importConnection({ ...ref, accessToken, refreshToken, expiresAt: Date.now() + 3_600_000 });
  return { accessToken, refreshToken };
}

let userSeq = 0;
function newUser(tenantId = 'org_scan') {
  userSeq += 1;
  return { tenantId, userId: `user_${userSeq}` };
}

// ---------------------------------------------------------------------------------------------
// The scenarios: one entry per path. To bring a new call into the scan, add an entry here.

/** @type {Array<{ name: string, run: (ctx: any) => Promise<void> }>} */
const SCENARIOS = [
  {
    name: 'connect flow through the handler and through the API (success)',
    async run(ctx) {
      for (const provider of ['echo', 'echobody', 'attio']) {
        const who = newUser();
        const { status, result } = await connectThroughHandler(ctx, provider, who);
        if (status !== 200 || !result?.ok) throw new Error(`the ${provider} connect flow failed: ${JSON.stringify(result)}`);
        const last = [...ctx.provider.received].filter((v) => v.startsWith('PLANTED-access_token-')).length;
        if (last === 0 && provider === 'attio') throw new Error('the identity probe sent no planted token');
        await ctx.authpipe.getConnection({ provider, ...who });
        const apiWho = newUser();
        const outcome = await connectThroughApi(ctx, provider, apiWho);
        if (!outcome.ok) throw outcome.error;
      }
      // The fetch handler: the same routes as WHATWG Request -> Response.
      const handle = ctx.authpipe.fetchHandler({ appOrigin: ctx.appOrigin });
      const who = newUser();
      const { token } = await ctx.authpipe.createConnectSession(who);
      const start = await handle(new Request(`${ctx.appOrigin}/authpipe/connect/echo?session=${token}`));
      await recordResponse(ctx, 'fetchHandler connect', start, ['binding', 'state']);
      const consent = await fetch(start.headers.get('location'), { redirect: 'manual' });
      const cookie = start.headers.getSetCookie().map((c) => c.split(';')[0]).join('; ');
      const page = await handle(new Request(consent.headers.get('location'), { headers: { cookie } }));
      if (page.status !== 200) throw new Error(`fetchHandler callback answered ${page.status}`);
      await recordResponse(ctx, 'fetchHandler callback', page);
    },
  },
  {
    name: 'connect flow: every failure of the code exchange, through the handler and the API',
    async run(ctx) {
      for (const failure of FAILURES) {
        ctx.provider.queue.token.push(failure);
        const viaHandler = await connectThroughHandler(ctx, 'echo', newUser());
        if (viaHandler.result?.ok !== false) throw new Error(`${failure}: the handler's flow did not fail`);
        ctx.provider.queue.token.push(failure);
        const viaApi = await connectThroughApi(ctx, 'echobody', newUser());
        if (viaApi.ok) throw new Error(`${failure}: handleCallback did not fail`);
      }
    },
  },
  {
    name: 'connect flow: the provider denies, echoing the request; the identity probe fails after the exchange',
    async run(ctx) {
      ctx.provider.queue.authorize.push('deny_echo');
      await connectThroughHandler(ctx, 'echo', newUser());
      ctx.provider.queue.authorize.push('deny_echo');
      await connectThroughApi(ctx, 'echo', newUser());
      for (const failure of FAILURES) {
        ctx.provider.queue.identity.push(failure);
        await connectThroughHandler(ctx, 'attio', newUser());
      }
    },
  },
  {
    name: 'connect flow: a state, code or session used twice, or wrong',
    async run(ctx) {
      const who = newUser();
      const { url } = await ctx.authpipe.startConnect({ provider: 'echo', ...who });
      const consent = await fetch(url, { redirect: 'manual' });
      const callback = consent.headers.get('location');
      await ctx.authpipe.handleCallback({ url: callback });
      await ctx.authpipe.handleCallback({ url: callback }).catch(() => {}); // STATE_ALREADY_USED
      const forged = new URL(callback);
      forged.searchParams.set('state', `${forged.searchParams.get('state')}x`);
      await ctx.authpipe.handleCallback({ url: forged.href }).catch(() => {});
      await browse(ctx, forged.href);
      await browse(ctx, callback); // no cookie, a spent state
      const { token } = await ctx.authpipe.createConnectSession(newUser());
      await browse(ctx, `${ctx.appOrigin}/authpipe/connect/echo?session=${encodeURIComponent(token)}`);
      await browse(ctx, `${ctx.appOrigin}/authpipe/connect/echo?session=${encodeURIComponent(token)}`); // used up
      await browse(ctx, `${ctx.appOrigin}/authpipe/connect/echo?session=${encodeURIComponent(plant('bad_input'))}`);
    },
  },
  {
    name: 'refresh: success, then every kind of failure (echoing providers, refused, reset, timeout)',
    async run(ctx) {
      const ref = { provider: 'echo', ...newUser() };
      const { refreshToken } = await importPlanted(ctx, ref);
      const refreshed = await ctx.authpipe.refreshConnection(ref);
      if (refreshed.status !== 'active') throw new Error('the refresh failed');
      const issued = planted.filter((p) => p.kind === 'access_token').at(-1).value;
      await expectCredential(ctx, ref, issued);
      for (const provider of ['echo', 'echobody']) {
        for (const failure of FAILURES) {
          const failing = { provider, ...newUser() };
          const { accessToken } = await importPlanted(ctx, failing);
          ctx.provider.queue.token.push(failure);
          await ctx.authpipe.refreshConnection(failing);
          await ctx.authpipe.getConnection(failing);
          // Still valid (or revoked): served, or refused with an error the scan reads.
          await expectCredential(ctx, failing, accessToken).catch(() => {});
        }
      }
      const refused = { provider: 'refused', ...newUser() };
      await importPlanted(ctx, refused);
      await ctx.authpipe.refreshConnection(refused);
      const revoked = { provider: 'echo', ...newUser() };
      await importPlanted(ctx, revoked);
      ctx.provider.queue.token.push('invalid_grant_echo');
      await ctx.authpipe.refreshConnection(revoked);
      await ctx.authpipe.getCredential(revoked).catch(() => {}); // CONNECTION_REVOKED
      const expired = { provider: 'echo', ...newUser() };
      await ctx.authpipe.importConnection({ ...expired, accessToken: plant('access_token'), expiresAt: Date.now() - 60_000 });
      await ctx.authpipe.getCredential(expired).catch(() => {}); // CONNECTION_EXPIRED (no refresh token)
      if (!ctx.provider.received.has(refreshToken)) throw new Error('the provider never received the planted refresh token');
    },
  },
  {
    name: 'health probes: success, and every kind of failure (Bearer and an API key), refused',
    async run(ctx) {
      const ref = { provider: 'attio', ...newUser() };
      await ctx.authpipe.importConnection({ ...ref, accessToken: plant('access_token') });
      await ctx.authpipe.checkConnection(ref);
      for (const failure of FAILURES) {
        const failing = { provider: 'attio', ...newUser() };
        await ctx.authpipe.importConnection({ ...failing, accessToken: plant('access_token') });
        ctx.provider.queue.identity.push(failure);
        await ctx.authpipe.checkConnection(failing);
        const keyed = { provider: 'echo', ...newUser() };
        await ctx.authpipe.importConnection({ ...keyed, apiKey: plant('api_key') });
        ctx.provider.queue.identity.push(failure);
        await ctx.authpipe.checkConnection(keyed);
      }
      const refused = { provider: 'refused', ...newUser() };
      await ctx.authpipe.importConnection({ ...refused, accessToken: plant('access_token') });
      await ctx.authpipe.checkConnection(refused);
    },
  },
  {
    name: 'revocation: accepted, every kind of failure, refused',
    async run(ctx) {
      for (const failure of ['ok', ...FAILURES]) {
        const ref = { provider: 'echo', ...newUser() };
        await importPlanted(ctx, ref);
        ctx.provider.queue.revoke.push(failure);
        await ctx.authpipe.deleteConnection(ref);
      }
      const refused = { provider: 'refused', ...newUser() };
      await importPlanted(ctx, refused);
      await ctx.authpipe.deleteConnection(refused);
    },
  },
  {
    name: 'API keys and webhook secrets: connections and setSecret/getSecret/deleteSecret',
    async run(ctx) {
      const ref = { provider: 'echo', ...newUser() };
      const apiKey = plant('api_key');
      await ctx.authpipe.importConnection({ ...ref, apiKey });
      await expectCredential(ctx, ref, apiKey);
      const secrets = [
        { tenantId: 'org_scan', provider: 'echo', name: 'api_key', value: plant('secret_value') },
        { tenantId: 'org_scan', provider: 'attio', name: 'webhook', value: plant('webhook_secret') },
        { tenantId: 'org_scan', name: 'tenant_wide', value: plant('webhook_secret') },
      ];
      for (const secret of secrets) {
        await ctx.authpipe.setSecret(secret);
        const value = await ctx.authpipe.getSecret(secret);
        if (value !== secret.value) throw new Error(`getSecret returned another value for ${secret.name}`);
      }
      const replaced = { ...secrets[0], value: plant('secret_value') };
      await ctx.authpipe.setSecret(replaced);
      if ((await ctx.authpipe.getSecret(replaced)) !== replaced.value) throw new Error('a replaced secret is not served');
      await ctx.authpipe.deleteSecret(secrets[2]);
      await ctx.authpipe.getSecret(secrets[2]).catch(() => {}); // SECRET_NOT_FOUND
    },
  },
  {
    name: 'webhooks: verified, and refused for every reason (missing, malformed, wrong, tampered, expired, no secret)',
    async run(ctx) {
      const tenantId = 'org_scan';
      const secret = plant('webhook_secret');
      await ctx.authpipe.setSecret({ tenantId, provider: 'attio', name: 'webhook', value: secret });
      const body = Buffer.from(JSON.stringify({ event_type: 'record.updated', token: plant('access_token') }));
      const mac = (key, data) => createHmac('sha256', key).update(data).digest();
      const attio = (headers, b = body) => ctx.authpipe.verifyWebhook({ provider: 'attio', tenantId, headers, body: b });
      await attio({ 'attio-signature': mac(secret, body).toString('hex') });
      const refusals = [
        {},
        { 'attio-signature': 'not hex' },
        { 'x-attio-signature': mac(plant('webhook_secret'), body).toString('hex') },
      ];
      for (const headers of refusals) await attio(headers).catch(() => {});
      await attio({ 'attio-signature': mac(secret, body).toString('hex') }, Buffer.concat([body, Buffer.from(' ')])).catch(() => {});
      await ctx.authpipe.verifyWebhook({ provider: 'attio', tenantId: 'org_without_secret', headers: { 'attio-signature': mac(secret, body).toString('hex') }, body }).catch(() => {});

      // HubSpot v3, keyed by a vault secret: method + URL + body + timestamp, base64.
      const hubspotKey = plant('webhook_secret');
      await ctx.authpipe.setSecret({ tenantId, provider: 'hubspot', name: 'webhook', value: hubspotKey });
      const url = `https://app.example/webhooks/hubspot?token=${plant('access_token')}`;
      const hubspot = (timestamp) => {
        const signature = mac(hubspotKey, `POST${url}${body.toString('utf8')}${timestamp}`).toString('base64');
        return ctx.authpipe.verifyWebhook({ provider: 'hubspot', tenantId, name: 'webhook', method: 'POST', url, body, headers: { 'x-hubspot-signature-v3': signature, 'x-hubspot-request-timestamp': String(timestamp) } });
      };
      await hubspot(Date.now());
      await hubspot(Date.now() - 3_600_000).catch(() => {});
    },
  },
  {
    name: 'bad input carrying secrets: refused without repeating them',
    async run(ctx) {
      const ref = { provider: 'echo', ...newUser() };
      const attempts = [
        { ...ref, accessToken: `${plant('bad_input')}\n` },
        { ...ref, accessToken: plant('bad_input'), apiKey: plant('bad_input') },
        { ...ref, apiKey: plant('bad_input'), refreshToken: plant('bad_input') },
        { ...ref, accessToken: plant('bad_input').repeat(2000) },
        { ...ref, accessToken: plant('bad_input'), expiresAt: 'soon' },
        { ...ref, accessToken: plant('bad_input'), extras: { note: plant('bad_input'), bad: () => {} } },
        { ...ref, provider: 'nope', accessToken: plant('bad_input') },
      ];
      for (const input of attempts) await ctx.authpipe.importConnection(input).catch(() => {});
      await ctx.authpipe.importConnections([{ ...ref, accessToken: plant('bad_input') }, { ...ref, userId: '', refreshToken: plant('bad_input') }]).catch(() => {});
      await ctx.authpipe.setSecret({ tenantId: 'org_scan', name: '', value: plant('bad_input') }).catch(() => {});
      await ctx.authpipe.handleCallback({ query: { code: plant('bad_input'), state: plant('bad_input') } }).catch(() => {});
      // (A callback's `error` code is kept as the provider wrote it, up to 64 printable characters:
      // it names what failed, and comes from the browser's URL, not from anything we hold.)
      await ctx.authpipe.handleCallback({ query: { error: 'access_denied', error_description: plant('bad_input'), state: plant('bad_input') } }).catch(() => {});
      for (const masterKey of [plant('bad_input'), randomBytes(31).toString('base64'), randomBytes(33).toString('hex')]) {
        if (!masterKey.startsWith('PLANTED')) planted.push({ kind: 'master_key', value: masterKey, core: '' });
        ctx.tryOpen({ masterKey });
      }
      ctx.tryOpen({ masterKeys: [{ id: 'k1', key: plantMasterKey('base64') }, { id: 'k1', key: plantMasterKey('hex') }] });
      ctx.tryOpen({ masterKey: plantMasterKey('base64'), masterKeys: [{ id: 'k9', key: plantMasterKey('hex') }] });
      ctx.tryOpen({ providers: { echo: { ...ctx.providers.echo, clientSecret: 42, tokenUrl: `http://example.com/${plant('client_secret')}` } } });
      // Opening the store with a master key that is not the store's: VAULT_KEY_MISMATCH.
      const wrong = await ctx.openOther({ masterKey: plantMasterKey('hex') });
      await wrong.ready().catch(() => {});
      await wrong.getCredential(ref).catch(() => {});
      await wrong.close();
    },
  },
  {
    name: 'master key rotation: rotate, retire, reopen with the new key alone and with the retired one',
    async run(ctx) {
      const ref = { provider: 'echo', ...newUser() };
      const { accessToken } = await importPlanted(ctx, ref);
      const next = plantMasterKey('base64');
      await ctx.reopen({ masterKeys: [{ id: 'k2', key: next }, { id: 'k1', key: ctx.masterKey }] });
      await ctx.authpipe.rotateMasterKey();
      await ctx.authpipe.retireMasterKey('k1');
      await expectCredential(ctx, ref, accessToken);
      const old = ctx.masterKey;
      ctx.masterKey = next;
      await ctx.reopen({ masterKeys: [{ id: 'k2', key: next }] });
      await expectCredential(ctx, ref, accessToken);
      const retired = await ctx.openOther({ masterKeys: [{ id: 'k1', key: old }] });
      await retired.ready().catch(() => {});
      await retired.close();
      await ctx.authpipe.retireMasterKey('k2').catch(() => {}); // KEY_IN_USE
    },
  },
  {
    name: 'tenant data-key rotation: connections, secrets and a pending flow re-sealed, twice; an unknown tenant',
    async run(ctx) {
      const tenantId = 'org_rotating';
      const ref = { provider: 'echo', ...newUser(tenantId) };
      const { accessToken } = await importPlanted(ctx, ref);
      const secret = { tenantId, provider: 'attio', name: 'webhook', value: plant('webhook_secret') };
      await ctx.authpipe.setSecret(secret);
      await ctx.authpipe.startConnect({ provider: 'echo', ...newUser(tenantId) });
      for (let i = 0; i < 2; i++) {
        await ctx.authpipe.rotateTenantKey(tenantId);
        await expectCredential(ctx, ref, accessToken);
        if ((await ctx.authpipe.getSecret(secret)) !== secret.value) throw new Error('a re-sealed secret is not served');
      }
      await ctx.authpipe.rotateTenantKey('org_never_stored').catch(() => {}); // TENANT_NOT_FOUND
    },
  },
  {
    name: 'tenant deletion: connections, secrets, sessions and flows of a tenant, then calls on it',
    async run(ctx) {
      const who = newUser('org_doomed');
      const ref = { provider: 'echo', ...who };
      await importPlanted(ctx, ref);
      await ctx.authpipe.importConnection({ provider: 'echobody', ...who, apiKey: plant('api_key') });
      await ctx.authpipe.setSecret({ tenantId: who.tenantId, name: 'webhook', value: plant('webhook_secret') });
      await ctx.authpipe.createConnectSession(who);
      await ctx.authpipe.startConnect({ provider: 'echo', ...who });
      await connectThroughHandler(ctx, 'attio', newUser('org_doomed'));
      await ctx.authpipe.deleteTenant(who.tenantId);
      await ctx.authpipe.getCredential(ref).catch(() => {});
      await ctx.authpipe.getSecret({ tenantId: who.tenantId, name: 'webhook' }).catch(() => {});
      // A tenant created again: a new key generation.
      await importPlanted(ctx, ref);
    },
  },
  {
    name: 'providers that echo what they are sent into a success answer (identity account and scopes, granted scopes)',
    async run(ctx) {
      identityEchoes.push(true);
      await connectThroughHandler(ctx, 'attio', newUser());
      ctx.provider.queue.token.push('granted_scope_echo_200');
      await connectThroughHandler(ctx, 'echo', newUser());
      const refreshed = { provider: 'echo', ...newUser() };
      await importPlanted(ctx, refreshed);
      ctx.provider.queue.token.push('granted_scope_echo_200');
      if ((await ctx.authpipe.refreshConnection(refreshed)).status !== 'active') throw new Error('the refresh with echoed scopes failed');
      const ref = { provider: 'attio', ...newUser() };
      await ctx.authpipe.importConnection({ ...ref, accessToken: plant('access_token') });
      identityEchoes.push(true);
      await ctx.authpipe.checkConnection(ref);
    },
  },
  {
    name: 'diagnostics and listings: health, stats, every connection, the instance itself',
    async run(ctx) {
      await ctx.authpipe.health();
      await ctx.authpipe.stats();
      for (let cursor; cursor !== null; ) {
        const page = await ctx.authpipe.listConnections({ limit: 50, cursor });
        for (const c of page.connections) await ctx.authpipe.getConnection(c);
        cursor = page.nextCursor;
      }
      await ctx.authpipe.listConnections({ status: 'revoked' });
      await ctx.authpipe.listConnections({ cursor: plant('bad_input') }).catch(() => {});
      record('the Authpipe instance', ctx.raw);
      record('the Node handler', ctx.authpipe.handler({ appOrigin: ctx.appOrigin }));
    },
  },
  {
    name: 'metrics: the Prometheus text after every path above (and the engine reopened in between)',
    async run(ctx) {
      const text = await ctx.authpipe.metrics();
      if (!text.includes('authpipe_refreshes_total{')) throw new Error('metrics() shows no refresh');
    },
  },
];

// ---------------------------------------------------------------------------------------------

async function main() {
  const provider = await startProvider();
  const closedPort = await new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
  const app = createServer();
  await new Promise((resolve) => app.listen(0, '127.0.0.1', resolve));
  const appOrigin = `http://127.0.0.1:${app.address().port}`;
  const endpoints = (base, name) => ({
    authorizeUrl: `${base}/${name}/authorize`,
    tokenUrl: `${base}/${name}/token`,
    revokeUrl: `${base}/${name}/revoke`,
    identityUrl: `${base}/${name}/identity`,
    redirectUri: `${appOrigin}/authpipe/callback/${name}`,
  });
  const providers = {
    echo: { ...endpoints(provider.origin, 'echo'), clientId: 'client-echo', clientSecret: plant('client_secret') },
    echobody: { ...endpoints(provider.origin, 'echobody'), clientId: 'client-echobody', clientSecret: plant('client_secret'), clientAuth: 'body' },
    attio: { ...endpoints(provider.origin, 'attio'), clientId: 'client-attio', clientSecret: plant('client_secret') },
    refused: { ...endpoints(`http://127.0.0.1:${closedPort}`, 'refused'), clientId: 'client-refused', clientSecret: plant('client_secret') },
  };
  const logger = pino({ level: 'trace' }, pino.destination({ dest: config.log, sync: true }));
  const base = { store: config.store, httpTimeoutMs: HTTP_TIMEOUT_MS, healthCheckIntervalMs: 0, providers, logger };
  const events = [];
  const ctx = {
    provider,
    providers,
    appOrigin,
    outputs,
    masterKey: plantMasterKey('base64'),
    raw: undefined,
    authpipe: undefined,
    /** Opens the scenario's instance (closing the one before), with every event recorded. */
    async reopen(options) {
      await ctx.authpipe?.close();
      ctx.raw = new Authpipe({ ...base, ...options });
      ctx.authpipe = instrument(ctx.raw);
      for (const name of CONNECTION_EVENT_NAMES) ctx.authpipe.on(name, (event) => events.push(event));
      await ctx.authpipe.ready();
    },
    /** Another instance on the store (its errors recorded), for the caller to close. */
    async openOther(options) {
      return instrument(new Authpipe({ ...base, ...options }));
    },
    /** Constructs an instance that should be refused, recording the error. */
    tryOpen(options) {
      try {
        const instance = new Authpipe({ ...base, ...options });
        void instance.close();
        throw new Error(`new Authpipe() accepted ${Object.keys(options).join(', ')}`);
      } catch (err) {
        if (!(err instanceof AuthpipeError)) throw err;
        record('new Authpipe() threw', err);
      }
    },
  };
  app.on('request', (req, res) => ctx.raw.handler({ appOrigin })(req, res));
  await ctx.reopen({ masterKeys: [{ id: 'k1', key: ctx.masterKey }] });

  const ran = [];
  for (const scenario of SCENARIOS) {
    await scenario.run(ctx);
    ran.push(scenario.name);
    snapshotStore(ran.length);
  }
  record('events', events);
  await ctx.authpipe.close();
  await provider.close();
  app.closeAllConnections();
  await new Promise((resolve) => app.close(resolve));
  writeFileSync(
    config.results,
    JSON.stringify({ scenarios: ran, called: [...called], events: events.length, received: provider.received.size, planted, generated, outputs }),
  );
}

/** Copies the SQLite store's files as they are now, each to `<snapshots>/<n>/<name>`. */
function snapshotStore(n) {
  if (!config.snapshots) return;
  const storeDir = dirname(config.store);
  const to = join(config.snapshots, String(n));
  mkdirSync(to, { recursive: true });
  for (const name of readdirSync(storeDir)) copyFileSync(join(storeDir, name), join(to, name));
}

async function recordResponse(ctx, where, res, allows = []) {
  const headers = [...res.headers].map(([k, v]) => `${k}: ${v}`).join('\n');
  for (const c of res.headers.getSetCookie()) noteGenerated('binding', c.split(';')[0].split('=').slice(1).join('=').split('.')[0]);
  ctx.outputs.push({ where, text: `HTTP ${res.status}\n${headers}\n\n${await res.text()}`, allows });
}

main().catch((err) => {
  // Only the scenario's own failure (an assertion above): the spec fails on the exit code.
  process.stderr.write(`scenario failed: ${err instanceof AuthpipeError ? `${err.code} ${err.message}` : err?.message}\n`);
  process.exit(1);
});
