// An Express app whose users connect their Attio workspace. `node server.js`, then open
// http://127.0.0.1:3000/. With ATTIO_CLIENT_ID and ATTIO_CLIENT_SECRET it connects real Attio
// (register http://127.0.0.1:3000/authpipe/callback/attio as the redirect URI); without them the
// offline Attio sandbox stands in, so it runs as cloned.
'use strict';
const express = require('express');
const { Authpipe, AuthpipeError } = require('@authpipe/node');
const { createSandbox } = require('@authpipe/node/testing');

const port = Number(process.env.PORT ?? 3000);
const appOrigin = process.env.APP_ORIGIN ?? `http://127.0.0.1:${port}`;
const redirectUri = `${appOrigin}/authpipe/callback/attio`;

/** The signed-in user. A real app reads its own session here. */
const currentUser = (_req) => ({ tenantId: 'org_acme', userId: 'user_123' });

async function main() {
  const { ATTIO_CLIENT_ID: clientId, ATTIO_CLIENT_SECRET: clientSecret } = process.env;
  const sandbox = clientId && clientSecret ? null : await createSandbox({ provider: 'attio', consentPage: true });
  const attio = sandbox ? sandbox.providerConfig({ redirectUri }) : { clientId, clientSecret, redirectUri };
  const authpipe = new Authpipe({
    store: process.env.AUTHPIPE_STORE ?? (clientId ? undefined : ':memory:'),
    masterKey: process.env.AUTHPIPE_MASTER_KEY,
    providers: { attio },
  });

  const app = express();
  // /authpipe/connect/attio and /authpipe/callback/attio; after the callback, back to /.
  app.use('/authpipe', authpipe.handler({ appOrigin, returnTo: `${appOrigin}/` }));

  app.get('/api/connection', async (req, res, next) => {
    const ref = { provider: 'attio', ...currentUser(req) };
    try {
      // The credential is for calls to Attio's API from here; it never goes to the browser.
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
    const { token } = await authpipe.createConnectSession({ ...currentUser(req), providers: ['attio'] });
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
