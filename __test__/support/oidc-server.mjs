// A real, certified authorization server for tests: panva's oidc-provider on 127.0.0.1, with
// logins and consent granted headlessly (no browser), PKCE required, RFC 9207 `iss` in every
// authorization response, refresh-token rotation, revocation and introspection.
//
//   node oidc-server.mjs '{"clientId":"...","clientSecret":"...","redirectUris":["..."],"accessTokenTtl":60}'
//
// Prints one JSON line, {"issuer": "..."}, once it listens; exits when stdin closes.
//
// Fault injection for refresh tests: POST /__faults with a JSON list of faults, each used by one
// POST /token: { status, body?, retryAfter? } answers without reaching the provider;
// { malformed: true } answers 200 with a body that is not JSON, also without reaching it;
// { reset: true } destroys the connection before the provider sees the request;
// { delayMs } waits, then answers 503 without reaching the provider (for client timeouts);
// { lose: true } lets the provider rotate the token, then destroys the connection (a lost
// response); { slowMs } lets the provider answer, then holds the answer back that long (a slow
// network: the token's life has begun before the client hears of it). GET /__stats returns { tokenRequests, refreshGrants, invalidGrants, probes }
// (probes: introspection requests from Authpipe's health checks, told by their User-Agent), and
// GET /__refusals each invalid_grant as evidence: when, why, and when a reused refresh token had
// first been spent.
// GET /__token?token=<access token> tells when a token issued here expires(d) and whether its
// grant was revoked, also after it expired: whether it was valid at a given moment, which an
// introspection that arrives later cannot say.
//
// A ledger of token pairs, for crash tests (storm.ts): every token response's access and
// refresh token get the grant's next sequence number, and the server remembers, per grant, the
// pair it issued last (and to whom), the refresh token last presented (which pair it came from,
// what became of it) and, globally, the access token last presented to introspection by
// Authpipe's probe. GET /__ledger returns it by grant id (never a token), GET /__lastProbe the
// last probe. Token requests to /w<N>/token are served as /token and recorded as worker N's;
// each refresh answered prints a line {"rotated":{grantId,seq,worker}} once its response is sent.
// POST /__hold with "on" answers untagged token requests 503 until "off" (a checking instance's
// own background refreshes must not move the pair it is reading); the first untagged refresh
// token presented after that is each grant's `checkRefresh`.
// (oidc-provider is ESM-only, so CommonJS tests run it in this child process.)
import { AsyncLocalStorage } from 'node:async_hooks';
import http from 'node:http';
import Provider from 'oidc-provider';

const config = JSON.parse(process.argv[2]);
const API = 'https://api.example.test';
const ttl = config.accessTokenTtl ?? 60;

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

// oidc-provider's built-in adapter is an LRU of 1000 entries: with hundreds of connections and
// 2-second tokens it evicts live refresh tokens ("refresh token not found"). This one keeps
// every entry until it expires.
const GRANTABLE = new Set(['AccessToken', 'AuthorizationCode', 'RefreshToken']);
const entries = new Map(); // `${model}:${id}` -> { payload, expiresAt }
const grants = new Map(); // grantId -> Set of keys
const byUid = new Map(); // `${model}:${uid}` -> key in entries (sessions are found by uid)
const accessTokens = new Map(); // id -> { exp (s), grantId }, kept after expiry for /__token
const revokedGrants = new Set();
setInterval(() => {
  const now = Date.now();
  for (const [key, entry] of entries) if (entry.expiresAt <= now) entries.delete(key);
  for (const [uid, key] of byUid) if (!entries.has(key)) byUid.delete(uid);
}, 5_000).unref();
class UnboundedAdapter {
  constructor(model) {
    this.model = model;
  }
  key(id) {
    return `${this.model}:${id}`;
  }
  async upsert(id, payload, expiresIn) {
    entries.set(this.key(id), { payload, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : Infinity });
    if (this.model === 'AccessToken') accessTokens.set(id, { exp: payload.exp, grantId: payload.grantId });
    if (payload.uid) byUid.set(`${this.model}:${payload.uid}`, this.key(id));
    if (GRANTABLE.has(this.model) && payload.grantId) {
      if (!grants.has(payload.grantId)) grants.set(payload.grantId, new Set());
      grants.get(payload.grantId).add(this.key(id));
    }
  }
  async find(id) {
    const request = requests.getStore();
    if (this.model === 'AccessToken' && request?.probe && !request.probed) {
      request.probed = true;
      lastProbe = { count: ++probeCount, at: Date.now(), ...(issued.get(id) ?? { grantId: null, seq: null }) };
    }
    const entry = entries.get(this.key(id));
    if (!entry || entry.expiresAt <= Date.now()) return undefined;
    return entry.payload;
  }
  async findByUid(uid) {
    const entry = entries.get(byUid.get(`${this.model}:${uid}`));
    return entry && entry.expiresAt > Date.now() ? entry.payload : undefined;
  }
  async findByUserCode() {
    return undefined;
  }
  async consume(id) {
    const entry = entries.get(this.key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }
  async destroy(id) {
    entries.delete(this.key(id));
  }
  async revokeByGrantId(grantId) {
    revokedGrants.add(grantId);
    for (const key of grants.get(grantId) ?? []) entries.delete(key);
    grants.delete(grantId);
  }
}

const provider = new Provider(issuer, {
  adapter: UnboundedAdapter,
  clients: [
    {
      client_id: config.clientId,
      client_secret: config.clientSecret,
      redirect_uris: config.redirectUris,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  pkce: { required: () => true },
  rotateRefreshToken: true,
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  scopes: ['openid', 'offline_access'],
  ttl: { AccessToken: ttl, AuthorizationCode: 60, RefreshToken: 24 * 3600, Grant: 24 * 3600, Interaction: 600, Session: 24 * 3600, IdToken: 3600 },
  cookies: { keys: ['test-only-cookie-signing-key'] },
  findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true, allowedPolicy: async () => true },
    introspection: { enabled: true, allowedPolicy: async () => true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => API,
      useGrantedResource: async () => true,
      getResourceServerInfo: async () => ({ scope: 'api:read api:write', accessTokenTTL: ttl, accessTokenFormat: 'opaque' }),
    },
  },
  interactions: { url: async (ctx, interaction) => `/test-interaction/${interaction.uid}` },
  loadExistingGrant: async (ctx) => {
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid offline_access');
    grant.addResourceScope(API, 'api:read api:write');
    await grant.save();
    return grant;
  },
});

// The pair ledger (see the top of this file).
const requests = new AsyncLocalStorage(); // per request: { worker, probe, probed, res }
const issued = new Map(); // token (access or refresh) -> { grantId, seq }
const ledger = new Map(); // grantId -> { latest: { seq, worker, at }, lastRefresh?: { seq, worker, at, outcome } }
let lastProbe = null;
let holdUntagged = false;
let probeCount = 0;
function recordPair(ctx) {
  const { AccessToken: access, RefreshToken: refresh } = ctx.oidc.entities;
  if (!access || !refresh) return;
  const grantId = access.grantId;
  const seq = ledger.has(grantId) ? ledger.get(grantId).latest.seq + 1 : 0;
  const worker = requests.getStore()?.worker ?? null;
  issued.set(access.jti, { grantId, seq });
  issued.set(refresh.jti, { grantId, seq });
  ledger.set(grantId, { ...ledger.get(grantId), latest: { seq, worker, at: Date.now() } });
  return { grantId, seq, worker };
}
function recordPresented(ctx, outcome) {
  const presented = issued.get(ctx.oidc.params?.refresh_token);
  if (!presented) return;
  const entry = ledger.get(presented.grantId);
  const worker = requests.getStore()?.worker ?? null;
  entry.lastRefresh = { seq: presented.seq, worker, at: Date.now(), outcome };
  if (worker === null && !entry.checkRefresh) entry.checkRefresh = entry.lastRefresh;
}

const faults = [];
const stats = { tokenRequests: 0, refreshGrants: 0, invalidGrants: 0, probes: 0 };
provider.on('grant.success', (ctx) => {
  const refresh = ctx.oidc.params?.grant_type === 'refresh_token';
  if (refresh) stats.refreshGrants++;
  if (refresh) recordPresented(ctx, 'rotated');
  const pair = recordPair(ctx);
  const res = requests.getStore()?.res;
  if (refresh && pair && res) res.once('finish', () => process.stdout.write(`${JSON.stringify({ rotated: pair })}\n`));
});
const refusals = []; // { at, detail, spentAt? } per invalid_grant
provider.on('grant.error', (ctx, error) => {
  if (error.error !== 'invalid_grant') return;
  stats.invalidGrants++;
  if (ctx.oidc.params?.grant_type === 'refresh_token') recordPresented(ctx, error.error_detail ?? error.error_description ?? 'invalid_grant');
  const spent = ctx.oidc?.entities?.RefreshToken?.consumed;
  refusals.push({ at: Date.now(), detail: error.error_detail ?? error.error_description, spentAt: spent ? spent * 1000 : undefined });
});

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

const callback = provider.callback();
server.on('request', (req, res) => {
  const tagged = /^\/w(\d+)\/token$/.exec(req.url);
  if (tagged) req.url = '/token';
  const probe = req.url === '/token/introspection' && req.headers['user-agent']?.startsWith('authpipe-node/');
  requests.run({ worker: tagged ? Number(tagged[1]) : null, probe, probed: false, res }, () => serve(req, res));
});
async function serve(req, res) {
  if (req.url === '/__faults' && req.method === 'POST') {
    faults.push(...JSON.parse(await readBody(req)));
    res.writeHead(204).end();
    return;
  }
  if (req.url.startsWith('/__token?')) {
    const token = accessTokens.get(new URL(req.url, issuer).searchParams.get('token'));
    if (!token) return res.writeHead(404).end();
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ exp: token.exp, grantRevoked: revokedGrants.has(token.grantId) }));
    return;
  }
  if (req.url === '/__hold' && req.method === 'POST') {
    holdUntagged = (await readBody(req)) === 'on';
    if (holdUntagged) for (const entry of ledger.values()) delete entry.checkRefresh;
    res.writeHead(204).end();
    return;
  }
  if (req.url === '/__ledger') {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(Object.fromEntries(ledger)));
    return;
  }
  if (req.url === '/__lastProbe') {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(lastProbe));
    return;
  }
  if (req.url === '/__refusals') {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(refusals));
    return;
  }
  if (req.url === '/__stats') {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(stats));
    return;
  }
  if (req.url === '/token/introspection' && req.headers['user-agent']?.startsWith('authpipe-node/')) stats.probes++;
  if (req.url === '/token' && req.method === 'POST') {
    stats.tokenRequests++;
    if (holdUntagged && requests.getStore().worker === null) {
      return res.writeHead(503, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'temporarily_unavailable' }));
    }
    const fault = faults.shift();
    if (fault?.reset) return req.socket.destroy();
    if (fault?.delayMs) {
      await new Promise((resolve) => setTimeout(resolve, fault.delayMs));
      return res.writeHead(503).end();
    }
    if (fault?.malformed) return res.writeHead(200, { 'content-type': 'application/json' }).end('{"access_token": "trunc');
    if (fault?.status) {
      const headers = { 'content-type': 'application/json' };
      if (fault.retryAfter) headers['retry-after'] = fault.retryAfter;
      return res.writeHead(fault.status, headers).end(JSON.stringify(fault.body ?? { error: 'server_error' }));
    }
    if (fault?.slowMs) {
      const end = res.end.bind(res);
      res.end = (...args) => {
        setTimeout(() => end(...args), fault.slowMs);
        return res;
      };
    }
    if (fault?.lose) {
      // The provider handles the request (and rotates); the client never hears the answer.
      res.end = () => {
        req.socket.destroy();
        return res;
      };
    }
  }
  if (req.url.startsWith('/test-interaction/')) {
    try {
      await provider.interactionFinished(req, res, { login: { accountId: 'user-42' } }, { mergeWithLastSubmission: false });
    } catch (e) {
      res.statusCode = 500;
      res.end(String(e));
    }
    return;
  }
  callback(req, res);
}

process.stdout.write(`${JSON.stringify({ issuer })}\n`);
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
