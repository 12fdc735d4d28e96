// npm run demo: the whole product on the embedded default store, with no configuration.
// A user connects an Attio workspace (the Attio sandbox stands in for Attio, offline) through
// Authpipe's HTTP handler, as a browser would; then the app serves credentials, and the demo
// prints the connection (never a token) and what a credential costs.
'use strict';
const http = require('node:http');
const { Authpipe } = require('@authpipe/node');
const { createSandbox } = require('@authpipe/node/testing');

const who = { tenantId: 'org_acme', userId: 'user_123' };

async function main() {
  // Attio, emulated on 127.0.0.1.
  const attio = await createSandbox({ provider: 'attio', workspace: { name: 'Acme Corp', slug: 'acme' } });

  // The app: Authpipe's handler mounted at /authpipe.
  const app = http.createServer();
  await new Promise((resolve) => app.listen(0, '127.0.0.1', resolve));
  const appOrigin = `http://127.0.0.1:${app.address().port}`;
  const redirectUri = `${appOrigin}/authpipe/callback/attio`;

  // No store and no master key: ./.authpipe/authpipe.db, and a development key beside it.
  const authpipe = new Authpipe({ providers: { attio: attio.providerConfig({ redirectUri }) } });
  app.on('request', authpipe.handler({ appOrigin }));
  authpipe.on('connection.created', (e) => console.log(`   event ${e.type}: ${e.provider}/${e.tenantId}/${e.userId} (${e.status})`));
  console.log(`store: ${(await authpipe.stats()).store}`);

  // The browser, minus the browser: the button opens /authpipe/connect/attio?session=...
  const { token } = await authpipe.createConnectSession({ ...who, providers: ['attio'] });
  const start = await fetch(`${appOrigin}/authpipe/connect/attio?session=${token}`, { redirect: 'manual' });
  const cookie = start.headers.getSetCookie()[0].split(';')[0];
  console.log(`1. /authpipe/connect/attio -> ${start.status} to ${new URL(start.headers.get('location')).origin}/authorize (PKCE S256, one-time state)`);
  const callback = await attio.consent(start.headers.get('location'));
  console.log(`2. the user consents; Attio sends the browser back to ${new URL(callback).pathname}`);
  const page = await (await fetch(callback, { headers: { cookie } })).text();
  const result = JSON.parse(/var result = (\{.*?\});\n/s.exec(page)[1]);
  console.log(`3. the callback page posts to the opener: ${JSON.stringify(result)}`);

  const ref = { provider: 'attio', ...who };
  console.log('\nconnection (metadata only, never a secret):');
  console.log(await authpipe.getConnection(ref));

  let t0 = process.hrtime.bigint();
  const first = await authpipe.getCredential(ref);
  const firstNs = Number(process.hrtime.bigint() - t0);
  const calls = 1_000_000;
  t0 = process.hrtime.bigint();
  for (let i = 0; i < calls; i++) await authpipe.getCredential(ref);
  const warmNs = Number(process.hrtime.bigint() - t0) / calls;

  const self = await (await fetch(attio.identityUrl, { headers: { authorization: `Bearer ${first.credential}` } })).json();
  console.log(`\ncredential: ${first.credential.slice(0, 6)}... (${first.credential.length} chars, ${first.type}, expires ${first.expiresAt ?? 'never'})`);
  console.log(`GET /v2/self with it: active=${self.active}, workspace "${self.workspace_name}"`);
  console.log(`first getCredential (into Rust, decrypt): ${(firstNs / 1000).toFixed(1)} µs`);
  console.log(`warm getCredential, mean of ${calls.toLocaleString()} awaited calls: ${warmNs.toFixed(0)} ns (no I/O, no call into Rust)`);

  await authpipe.close();
  app.closeAllConnections();
  app.close();
  await attio.close();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
