// A real, certified authorization server for tests: panva's oidc-provider on 127.0.0.1, with
// logins and consent granted headlessly (no browser), PKCE required, RFC 9207 `iss` in every
// authorization response, refresh-token rotation, revocation and introspection.
//
//   node oidc-server.mjs '{"clientId":"...","clientSecret":"...","redirectUris":["..."],"accessTokenTtl":60}'
//
// Prints one JSON line, {"issuer": "..."}, once it listens; exits when stdin closes.
// (oidc-provider is ESM-only, so CommonJS tests run it in this child process.)
import http from 'node:http';
import Provider from 'oidc-provider';

const config = JSON.parse(process.argv[2]);
const API = 'https://api.example.test';
const ttl = config.accessTokenTtl ?? 60;

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
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

const callback = provider.callback();
server.on('request', async (req, res) => {
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
});

process.stdout.write(`${JSON.stringify({ issuer })}\n`);
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
