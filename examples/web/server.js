// npm run demo:web: the product as a person sees it. An Express app on 127.0.0.1 with a
// signed-in demo user, Authpipe's handler at /authpipe, and a page with @authpipe/react's
// ConnectButton that connects an Attio workspace (the Attio sandbox, offline), then lists the
// user's connections with what a server-side getCredential costs. ATTIO_CLIENT_ID and
// ATTIO_CLIENT_SECRET switch the sandbox off and connect real Attio (register
// http://127.0.0.1:<port>/authpipe/callback/attio as the app's redirect URI).
'use strict';
const { randomBytes } = require('node:crypto');
const express = require('express');
const { Authpipe } = require('@authpipe/node');
const { createSandbox } = require('@authpipe/node/testing');
const { bundlePage } = require('./bundle');

const TENANT = 'org_demo';
const PROVIDERS = ['attio'];
const SIGN_IN_COOKIE = 'demo_user';
/** Awaited getCredential calls per connection shown, for a latency that is not one timer tick. */
const TIMED_CALLS = 1000;

/**
 * Starts the demo. `port` 0 picks a free one; `react` '18' bundles the page with React 18.
 * @returns {Promise<{ origin: string, authpipe: Authpipe, sandbox: import('@authpipe/node/testing').Sandbox | null, close(): Promise<void> }>}
 */
async function startWebDemo({ port = 3000, react = '19', env = process.env } = {}) {
  const script = await bundlePage({ react });
  const app = express();
  const server = await new Promise((resolve, reject) => {
    const s = app.listen(port, '127.0.0.1', () => resolve(s)).once('error', reject);
  });
  const origin = `http://127.0.0.1:${server.address().port}`;
  const redirectUri = `${origin}/authpipe/callback/attio`;

  const real = env.ATTIO_CLIENT_ID && env.ATTIO_CLIENT_SECRET;
  const sandbox = real ? null : await createSandbox({ provider: 'attio', consentPage: true, workspace: { name: 'Acme Corp', slug: 'acme' } });
  const authpipe = real
    ? // Real Attio: a store that keeps the connections; by default ./.authpipe/authpipe.db with a
      // development key beside it (AUTHPIPE_STORE and AUTHPIPE_MASTER_KEY choose others).
      new Authpipe({
        store: env.AUTHPIPE_STORE,
        masterKey: env.AUTHPIPE_MASTER_KEY,
        providers: { attio: { clientId: env.ATTIO_CLIENT_ID, clientSecret: env.ATTIO_CLIENT_SECRET, redirectUri } },
      })
    : // The sandbox forgets its tokens when it stops, so its connections live in memory too.
      new Authpipe({ store: ':memory:', masterKey: randomBytes(32).toString('base64'), providers: { attio: sandbox.providerConfig({ redirectUri }) } });

  // The demo's sign-in: a cookie naming the user, made on first visit. A real app has its own.
  const signedIn = (req) => /(?:^|;\s*)demo_user=(user_[A-Za-z0-9]+)/.exec(req.headers.cookie ?? '')?.[1];
  const requireUser = (req, res, next) => {
    req.userId = signedIn(req);
    if (!req.userId) return res.status(401).json({ error: 'not signed in' });
    next();
  };

  app.use('/authpipe', authpipe.handler({ appOrigin: origin, returnTo: '/' }));
  app.get('/', (req, res) => {
    let userId = signedIn(req);
    if (!userId) {
      userId = `user_${randomBytes(6).toString('hex')}`;
      res.cookie(SIGN_IN_COOKIE, userId, { httpOnly: true, sameSite: 'lax', path: '/' });
    }
    res.type('html').set('cache-control', 'no-store').send(pageHtml({ userId, tenantId: TENANT, sandbox: Boolean(sandbox) }));
  });
  app.get('/app.js', (req, res) => res.type('js').send(script));
  // The app's route that mints a connect session for whoever is signed in.
  app.post('/api/connect-session', requireUser, async (req, res) => {
    const { token } = await authpipe.createConnectSession({ tenantId: TENANT, userId: req.userId, providers: ['attio'] });
    res.set('cache-control', 'no-store').json({ token });
  });
  app.get('/api/connections', requireUser, async (req, res) => {
    const rows = [];
    for (const provider of PROVIDERS) {
      const c = await authpipe.getConnection({ provider, tenantId: TENANT, userId: req.userId }).catch((err) => (err.code === 'CONNECTION_NOT_FOUND' ? null : Promise.reject(err)));
      if (c) rows.push({ provider: c.provider, status: c.status, workspace: c.account?.name ?? null, scopes: c.scopes, createdAt: c.createdAt, getCredentialNs: await timeGetCredential(authpipe, c) });
    }
    res.set('cache-control', 'no-store').json({ connections: rows });
  });
  app.post('/api/disconnect', requireUser, async (req, res) => {
    await authpipe.deleteConnection({ provider: 'attio', tenantId: TENANT, userId: req.userId }).catch(() => undefined);
    res.json({ ok: true });
  });

  return {
    origin,
    authpipe,
    sandbox,
    async close() {
      await authpipe.close();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
      await sandbox?.close();
    },
  };
}

/** Mean ns of an awaited getCredential for a connection, warm (the first call warms the cache). */
async function timeGetCredential(authpipe, { provider, tenantId, userId }) {
  const ref = { provider, tenantId, userId };
  try {
    await authpipe.getCredential(ref);
  } catch {
    return null; // expired or revoked: nothing to serve
  }
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < TIMED_CALLS; i++) await authpipe.getCredential(ref);
  return Number(process.hrtime.bigint() - t0) / TIMED_CALLS;
}

function pageHtml({ userId, tenantId, sandbox }) {
  const boot = JSON.stringify({ userId, tenantId, sandbox }).replace(/</g, '\\u003c');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Authpipe demo: connect Attio</title>
<style>
  body { font: 15px/1.5 system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #1d2330; }
  header { background: #1d2330; color: #fff; padding: 14px 32px; display: flex; justify-content: space-between; }
  main { max-width: 880px; margin: 32px auto; padding: 0 24px; }
  section { background: #fff; border: 1px solid #e1e4ea; border-radius: 12px; padding: 20px 24px; margin-bottom: 20px; }
  h2 { font-size: 17px; margin: 0 0 12px; }
  .connect { font: inherit; font-weight: 600; padding: 10px 18px; border-radius: 8px; border: 0; background: #266df0; color: #fff; cursor: pointer; }
  .connect[aria-busy="true"] { opacity: .7; cursor: progress; }
  .connect:focus-visible { outline: 3px solid #9dbcf7; outline-offset: 2px; }
  .link { font: inherit; background: none; border: 0; color: #266df0; cursor: pointer; padding: 0; }
  table { border-collapse: collapse; width: 100%; } th, td { text-align: left; padding: 8px 10px; border-bottom: 1px solid #eceef2; }
  th { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: #667; }
  .status { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 13px; background: #e3f4e8; color: #16713a; }
  .status.revoked, .status.expired { background: #fde8e8; color: #a11; }
  .muted { color: #667; } code { font-size: 13px; }
  pre { background: #f1f3f6; border-radius: 8px; padding: 10px 12px; font-size: 12px; white-space: pre-wrap; word-break: break-word; margin: 0; }
</style></head>
<body><div id="root"></div>
<script>window.DEMO = ${boot};</script>
<script src="/app.js"></script></body></html>`;
}

module.exports = { startWebDemo };

if (require.main === module) {
  const port = process.env.PORT === undefined ? 3000 : Number(process.env.PORT);
  startWebDemo({ port }).then(
    (demo) => {
      console.log(`Authpipe web demo: ${demo.origin}/  (${demo.sandbox ? `Attio sandbox at ${demo.sandbox.origin}` : 'real Attio'}; Ctrl-C stops it)`);
      const stop = () => demo.close().then(() => process.exit(0));
      process.once('SIGINT', stop).once('SIGTERM', stop);
    },
    (err) => {
      console.error(err);
      process.exit(1);
    },
  );
}
