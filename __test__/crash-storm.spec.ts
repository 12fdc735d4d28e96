// Crash storms (support/storm.ts): two processes on one store, killed with SIGKILL at random
// moments during refresh storms, STORM_KILLS times per store (default 5; the full run is
// `npm run storm -- --kills 100`, see scripts/crash-storm.mjs). After every kill a fresh
// instance finds the store open, every connection decrypting and holding one token pair, old or
// new, and only those connections lost whose rotated refresh token existed only in a killed
// process. STORM_STORES (sqlite,postgres), STORM_SEED and STORM_CONNECTIONS (default 100) too.
import { join } from 'node:path';
import { startOidcProvider, type OidcProvider } from './support/oidc';
import { Authpipe } from '..';
import { checkConnections, runStorm } from './support/storm';
import { newKey, postgresStore, tempDir } from './helpers';

const KILLS = Number(process.env.STORM_KILLS ?? 5);
const CONNECTIONS = Number(process.env.STORM_CONNECTIONS ?? 100);
const SEED = Number(process.env.STORM_SEED ?? Math.floor(Math.random() * 2 ** 31));
const STORES = (process.env.STORM_STORES ?? 'sqlite,postgres').split(',').filter(Boolean) as Array<'sqlite' | 'postgres'>;
for (const kind of STORES) if (kind !== 'sqlite' && kind !== 'postgres') throw new Error(`STORM_STORES: unknown store ${kind} (sqlite, postgres)`);
const HTTP_TIMEOUT_MS = 3_000;
const redirectUri = 'http://127.0.0.1:9/authpipe/callback/oidc';

let oidc: OidcProvider;
const dir = tempDir();

beforeAll(async () => {
  oidc = await startOidcProvider({ redirectUris: [redirectUri], accessTokenTtl: 2 });
});

afterAll(async () => {
  await oidc.close();
});

describe.each(STORES)('crash storm on %s', (kind) => {
  test(`${KILLS} kills of two processes refreshing ${CONNECTIONS} connections: every store opens, every pair is whole, only tokens that died with a process are lost`, async () => {
    const result = await runStorm({
      kind,
      store: kind === 'sqlite' ? join(dir, 'storm.db') : postgresStore(),
      masterKey: newKey(),
      oidc,
      redirectUri,
      connections: CONNECTIONS,
      kills: KILLS,
      seed: SEED,
      httpTimeoutMs: HTTP_TIMEOUT_MS,
      log: (line) => process.stderr.write(`${line}\n`),
    });
    const { lost, ...figures } = result;
    console.log(`crash storm ${kind}: ${JSON.stringify({ ...figures, lost: lost.length, lostBy: lost.map((l) => `${l.userId}@${l.round}:${l.foundBy}`) })}`);
    expect(result.integrityFailures).toEqual([]);
    expect(result.mixedPairs).toBe(0);
    expect(result.rounds).toBe(KILLS);
    // Every connection's pair was checked after every kill, but those lost in it.
    expect(result.pairsChecked).toBe(CONNECTIONS * (KILLS + 1) - lost.filter((l) => l.foundBy === 'survivor').length);
    expect(result.refreshes).toBeGreaterThan(CONNECTIONS * KILLS);
  }, (KILLS * 60 + 120) * 1000);
});

test('the check itself finds a mixed pair, and a loss that no kill explains', async () => {
  const store = join(dir, 'control.db');
  const masterKey = newKey();
  const authpipe = new Authpipe({ store, masterKey, healthCheckIntervalMs: 0, providers: { oidc: oidc.providerConfig(redirectUri) } });
  const ref = (userId: string) => ({ provider: 'oidc', tenantId: 'tenant_control', userId });
  try {
    // "mixed": pair 2's access token stored with pair 1's refresh token.
    const first = await oidc.obtainTokens(redirectUri);
    const pair1 = await oidc.refreshDirectly(first.refresh_token);
    const pair2 = await oidc.refreshDirectly(pair1.refresh_token!);
    await authpipe.importConnection({ ...ref('mixed'), accessToken: pair2.access_token!, refreshToken: pair1.refresh_token!, expiresAt: Date.now() + 2_000 });
    // "stale": pair 0 stored, while the server gave pair 1 to a client that was never killed.
    const other = await oidc.obtainTokens(redirectUri);
    await oidc.refreshDirectly(other.refresh_token);
    await authpipe.importConnection({ ...ref('stale'), accessToken: other.access_token, refreshToken: other.refresh_token, expiresAt: Date.now() + 2_000 });
  } finally {
    await authpipe.close();
  }
  const checked = await checkConnections({ store, masterKey, oidc, redirectUri, httpTimeoutMs: HTTP_TIMEOUT_MS }, [ref('mixed'), ref('stale')], new Map(), null);
  expect(checked.mixedPairs).toBe(1);
  expect(checked.failures).toContainEqual(expect.objectContaining({ userId: 'mixed', failure: 'mixed pair', accessSeq: 2, refreshSeq: 1 }));
  expect(checked.lost.map((l) => l.userId).sort()).toEqual(['mixed', 'stale']);
  expect(checked.failures).toContainEqual(expect.objectContaining({ userId: 'stale', failure: 'lost, but its newest pair did not exist only in a killed process', storedSeq: 0, lostSeq: 1 }));
}, 60_000);
