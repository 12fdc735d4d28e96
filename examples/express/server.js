// An Express app whose users connect their Attio workspace. `node server.js`, then open
// http://127.0.0.1:3000/. With ATTIO_CLIENT_ID and ATTIO_CLIENT_SECRET it connects real Attio
// (register http://127.0.0.1:3000/authpipe/callback/attio as the redirect URI); without them the
// offline Attio sandbox stands in, so it runs as cloned. OIDC_ISSUER (with OIDC_CLIENT_ID and
// OIDC_CLIENT_SECRET) adds any OpenID Connect or OAuth 2 server as a second provider, `oidc`, its
// endpoints discovered from the issuer.
'use strict';
const express = require('express');
const { Authpipe, AuthpipeError } = require('@authpipe/node');
const { createSandbox } = require('@authpipe/node/testing');

const port = Number(process.env.PORT ?? 3000);
const appOrigin = process.env.APP_ORIGIN ?? `http://127.0.0.1:${port}`;
const callback = (provider) => `${appOrigin}/authpipe/callback/${provider}`;

/** The signed-in user. A real app reads its own session here. */
const currentUser = (_req) => ({ tenantId: 'org_acme', userId: 'user_123' });

async function main() {
  const env = process.env;
  const sandbox = env.ATTIO_CLIENT_ID && env.ATTIO_CLIENT_SECRET ? null : await createSandbox({ provider: 'attio', consentPage: true });
  const providers = {
    attio: sandbox ? sandbox.providerConfig({ redirectUri: callback('attio') }) : { clientId: env.ATTIO_CLIENT_ID, clientSecret: env.ATTIO_CLIENT_SECRET, redirectUri: callback('attio') },
  };
  if (env.OIDC_ISSUER) {
    providers.oidc = { issuer: env.OIDC_ISSUER, clientId: env.OIDC_CLIENT_ID, clientSecret: env.OIDC_CLIENT_SECRET, redirectUri: callback('oidc'), scopes: env.OIDC_SCOPES?.split(' ') };
  }
  const authpipe = new Authpipe({
    store: env.AUTHPIPE_STORE ?? (sandbox ? ':memory:' : undefined),
    masterKey: env.AUTHPIPE_MASTER_KEY,
    providers,
  });

  const app = express();
  // /authpipe/connect/:provider and /authpipe/callback/:provider; after the callback, back to /.
  app.use('/authpipe', authpipe.handler({ appOrigin, returnTo: `${appOrigin}/` }));

  // What the server knows about the user's connection (`?provider=`, default attio).
  app.get('/api/connection', async (req, res, next) => {
    const ref = { provider: typeof req.query.provider === 'string' ? req.query.provider : 'attio', ...currentUser(req) };
    try {
      // The credential is for calls to the provider's API from here; it never goes to the browser.
      const { type, expiresAt } = await authpipe.getCredential(ref);
      const connection = await authpipe.getConnection(ref);
      res.json({ connected: true, account: connection.account, status: connection.status, credential: { type, expiresAt } });
    } catch (err) {
      if (err instanceof AuthpipeError && err.code === 'CONNECTION_NOT_FOUND') res.json({ connected: false });
      else next(err);
    }
  });

  // A plain form: the connect session names the user's tenant, so the browser never does.
  app.get('/', async (req, res) => {
    const { token } = await authpipe.createConnectSession(currentUser(req));
    const outcome = req.query.authpipe === 'connected' ? '<p>Connected.</p>' : req.query.authpipe === 'error' ? `<p role="alert">Not connected (${escapeHtml(String(req.query.authpipe_error))}).</p>` : '';
    res.type('html').send(`<!doctype html><title>Authpipe with Express</title>
<h1>Your CRM</h1>${outcome}
<form method="post" action="/authpipe/connect/attio">
  <input type="hidden" name="session" value="${token}"><input type="hidden" name="mode" value="redirect">
  <button>Connect Attio</button>
</form>
<p><a href="/api/connection">What the server has</a></p>`);
  });

  const server = app.listen(port, '127.0.0.1', () => console.log(`listening on ${appOrigin}`));
  const stop = () => server.close(() => Promise.all([authpipe.close(), sandbox?.close()]));
  process.once('SIGINT', stop).once('SIGTERM', stop);
}

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
