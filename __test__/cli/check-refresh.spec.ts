// `authpipe check` and `authpipe refresh` against a real authorization server (panva's
// oidc-provider, support/oidc-server.mjs), on an SQLite and a PostgreSQL store: one connection
// or a filter, --json, and exit 1 once a connection is found revoked.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Authpipe } from '../..';
import { followUntil, startOidcProvider, type OidcProvider } from '../support/oidc';
import { authpipe, json, seededStore, STORE_KINDS, workDir, type Run, type StoreKind } from './cli';

const redirectUri = 'http://127.0.0.1:9/authpipe/callback/oidc'; // never contacted: we stop at it
const dir = workDir();
let oidc: OidcProvider;
let providersFile: string;

beforeAll(async () => {
  oidc = await startOidcProvider({ redirectUris: [redirectUri], accessTokenTtl: 3600 });
  providersFile = join(dir, 'providers.json');
  writeFileSync(providersFile, JSON.stringify({ oidc: oidc.providerConfig(redirectUri) }));
});

afterAll(() => oidc.close());

interface Results {
  total: number;
  ok: number;
  problems: number;
  skipped: number;
  errors: number;
  results: Array<{ userId: string; outcome: string; before: string; status: string; detail: string }>;
}

function expectExit(run: Run, code: number, errorCode?: string): void {
  if (run.code !== code) throw new Error(`expected exit ${code}, got ${run.code}\nstdout:\n${run.stdout}\nstderr:\n${run.stderr}`);
  if (errorCode) expect(run.stderr).toMatch(new RegExp(`^authpipe: ${errorCode}: `, 'm'));
}

describe.each(STORE_KINDS)('on %s', (kind: StoreKind) => {
  let store: string;
  let key: string;
  let keyFile: string;
  const tokens = new Map<string, string>();
  const cli = (args: readonly string[]) => authpipe([...args, '--store', store, '--master-key-file', keyFile]);
  const withProviders = (args: readonly string[]) => cli([...args, '--providers', providersFile]);

  beforeAll(async () => {
    ({ store, key, keyFile } = await seededStore(kind, dir, `oidc-${kind}`, [{ provider: 'close', tenantId: 'org_keys', userId: 'k', apiKey: 'an-api-key-of-close' }]));
    const app = new Authpipe({ store, masterKey: key, healthCheckIntervalMs: 0, providers: { oidc: oidc.providerConfig(redirectUri) } });
    try {
      for (const userId of ['alice', 'bob', 'carol']) {
        const { url } = await app.startConnect({ provider: 'oidc', tenantId: 'org_acme', userId });
        await app.handleCallback({ url: await followUntil(url, redirectUri) });
        tokens.set(userId, (await app.getCredential({ provider: 'oidc', tenantId: 'org_acme', userId })).credential);
      }
    } finally {
      await app.close();
    }
  });

  test('check one connection: probed at the provider, healthy', async () => {
    const { probes } = await oidc.stats();
    const run = await withProviders(['check', 'oidc', 'org_acme', 'alice']);
    expectExit(run, 0);
    expect(run.stdout).toMatch(/^TENANT\s+PROVIDER\s+USER\s+STATUS\s+RESULT$/m);
    expect(run.stdout).toMatch(/^org_acme\s+oidc\s+alice\s+active\s+healthy$/m);
    expect((await oidc.stats()).probes).toBe(probes + 1);
    const doc = json<Results>(await withProviders(['check', 'oidc', 'org_acme', 'alice', '--json']));
    expect(doc).toMatchObject({ total: 1, ok: 1, problems: 0, errors: 0, results: [{ userId: 'alice', outcome: 'ok', status: 'active' }] });
  });

  test('refresh one connection: a new token from the provider, stored', async () => {
    const { refreshGrants } = await oidc.stats();
    const run = await withProviders(['refresh', 'oidc', 'org_acme', 'alice', '--json']);
    expectExit(run, 0);
    expect(json<Results>(run)).toMatchObject({ ok: 1, results: [{ userId: 'alice', outcome: 'ok', detail: 'refreshed' }] });
    expect((await oidc.stats()).refreshGrants).toBe(refreshGrants + 1);
    const reader = new Authpipe({ store, masterKey: key, healthCheckIntervalMs: 0, providers: { oidc: oidc.providerConfig(redirectUri) } });
    try {
      const { credential } = await reader.getCredential({ provider: 'oidc', tenantId: 'org_acme', userId: 'alice' });
      expect(credential).not.toBe(tokens.get('alice'));
      expect((await oidc.introspect(credential)).active).toBe(true);
    } finally {
      await reader.close();
    }
    expect(run.stdout).not.toContain(tokens.get('alice'));
  });

  test('without the providers file: refresh refuses to run; a custom provider is unknown', async () => {
    const refresh = await cli(['refresh', 'oidc', 'org_acme', 'alice']);
    expectExit(refresh, 2, 'INVALID_ARGUMENT');
    expect(refresh.stderr).toContain('--providers');
    const check = await cli(['check', 'oidc', 'org_acme', 'alice']);
    expectExit(check, 2, 'UNKNOWN_PROVIDER');
    expect(check.stderr).toContain('authpipe: hint: a custom provider needs its settings');
    expectExit(await withProviders(['check']), 2, 'INVALID_ARGUMENT'); // which connections?
  });

  test('a revoked grant: check by filter lists it and exits 1; so does status; refresh keeps it revoked', async () => {
    await oidc.revoke(tokens.get('bob')!);
    const run = await withProviders(['check', '--provider', 'oidc', '--concurrency', '2']);
    expectExit(run, 1);
    expect(run.stdout).toMatch(/^org_acme\s+oidc\s+bob\s+active -> revoked\s+\S+/m);
    expect(run.stdout).not.toMatch(/alice|carol/); // in bulk, only what is not active
    expect(run.stdout).toMatch(/^Checked 3 connections: 2 healthy, 1 not active$/m);
    expect(run.stderr).toBe(''); // no progress bar in a pipe

    const status = await withProviders(['status', '--json']);
    expectExit(status, 1);
    expect(json(status)).toMatchObject({ total: 4, byStatus: { active: 3, revoked: 1 }, healthy: false });

    const refresh = json<Results>(await withProviders(['refresh', '--status', 'revoked', '--json']));
    expect(refresh).toMatchObject({ total: 1, problems: 1, results: [{ userId: 'bob', outcome: 'problem', status: 'revoked' }] });
    expectExit(await withProviders(['refresh', '--status', 'revoked']), 1);
  });

  test('refresh skips API keys, before any request', async () => {
    const run = await withProviders(['refresh', '--tenant', 'org_keys']);
    expectExit(run, 0);
    expect(run.stdout).toMatch(/^Refreshed 1 connection: 0 refreshed, 1 skipped$/m);
    const doc = json<Results>(await withProviders(['refresh', '--tenant', 'org_keys', '--json']));
    expect(doc.results).toMatchObject([{ userId: 'k', outcome: 'skipped', detail: 'API key: nothing to refresh' }]);
  });
});
