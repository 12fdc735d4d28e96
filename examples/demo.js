// npm run demo: Authpipe on the embedded default store, with no configuration.
// Imports a connection, serves its credential cold and warm, and prints what happened.
'use strict';
const { Authpipe } = require('..');
const crypto = require('node:crypto');

const ref = { provider: 'attio', tenantId: 'org_acme', userId: 'user_123' };

async function main() {
  // No store and no master key: ./.authpipe/authpipe.db, and a development key beside it.
  const authpipe = new Authpipe();
  await authpipe.ready();
  const { store } = await authpipe.stats();
  console.log(`store: ${store}`);

  // The connect flow is not built yet; import a connection the way a migration would.
  const connection = await authpipe.importConnection({
    ...ref,
    accessToken: crypto.randomBytes(30).toString('base64url'), // Attio tokens: ~40 chars, no expiry
    scopes: ['record_permission:read', 'object_configuration:read'],
  });
  console.log('connection (metadata only, never a secret):');
  console.log(connection);

  let t0 = process.hrtime.bigint();
  const cold = await authpipe.getCredential(ref);
  const coldNs = Number(process.hrtime.bigint() - t0);

  const calls = 1_000_000;
  t0 = process.hrtime.bigint();
  for (let i = 0; i < calls; i++) await authpipe.getCredential(ref);
  const warmNs = Number(process.hrtime.bigint() - t0) / calls;

  console.log(`\ncredential: ${cold.credential.slice(0, 6)}... (${cold.credential.length} chars, type ${cold.type}, expires ${cold.expiresAt ?? 'never'})`);
  console.log(`first getCredential (native cache, decrypt): ${(coldNs / 1000).toFixed(1)} µs`);
  console.log(`warm getCredential, mean of ${calls.toLocaleString()} awaited calls: ${warmNs.toFixed(0)} ns`);

  const page = await authpipe.listConnections({ tenantId: ref.tenantId });
  console.log(`\n${page.connections.length} connection(s) for ${ref.tenantId}: ${page.connections.map((c) => `${c.provider}/${c.userId} (${c.status})`).join(', ')}`);
  await authpipe.close();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
