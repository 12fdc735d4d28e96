// The flow the telemetry tests drive against the real authorization server (oidc.ts): memo
// hits, a refresh that succeeds, one that fails transiently, a revocation (the server drops a
// grant, the next refresh is refused with invalid_grant), a probe that succeeds and one that
// finds its token dead, and a tenant key rotation. Every token and secret it sees is returned,
// for the specs to look for where they must not be.
import { randomBytes } from 'node:crypto';
import { Authpipe, type AuthpipeOptions, type ConnectionRef } from '../..';
import { startOidcProvider, type OidcProvider } from './oidc';
import type { Planted } from './planted';

export const TENANT = 'org_telemetry_7f3a';
export const USERS = { ok: 'user_ok_91c2', revoked: 'user_revoked_4b7e', probed: 'user_probed_2d5f' } as const;
export const REDIRECT_URI = 'http://127.0.0.1:9/authpipe/callback/oidc'; // never contacted

/** What a flow ran against and saw. */
export interface FlowRig {
  oidc: OidcProvider;
  authpipe: Authpipe;
  masterKey: string;
  /** Every secret value seen: tokens imported and served, the client secret, the master key. */
  planted: Planted[];
  close(): Promise<void>;
}

/**
 * Starts the server and an instance on it (60-second tokens: no refresh runs on its own
 * meanwhile); `options` add to or override the instance's (the specs pass `testStore()`).
 */
export async function startRig(options: Partial<AuthpipeOptions> = {}): Promise<FlowRig> {
  const oidc = await startOidcProvider({ redirectUris: [REDIRECT_URI], accessTokenTtl: 60 });
  const masterKey = randomBytes(32).toString('base64');
  const authpipe = new Authpipe({
    store: ':memory:',
    masterKey,
    httpTimeoutMs: 1_000,
    healthCheckIntervalMs: 0,
    providers: { oidc: oidc.providerConfig(REDIRECT_URI) },
    ...options,
  });
  await authpipe.ready();
  const planted: Planted[] = [
    { kind: 'client_secret', value: oidc.clientSecret, core: oidc.clientSecret },
    { kind: 'master_key', value: masterKey, core: '', bytes: true },
  ];
  return {
    oidc,
    authpipe,
    masterKey,
    planted,
    async close() {
      await authpipe.close();
      await oidc.close();
    },
  };
}

const token = (kind: string, value: string): Planted => ({ kind, value, core: value });

/** A connection imported with tokens obtained from the server directly (so their values are known). */
async function importKnown(rig: FlowRig, userId: string): Promise<{ ref: ConnectionRef; accessToken: string }> {
  const tokens = await rig.oidc.obtainTokens(REDIRECT_URI);
  const ref = { provider: 'oidc', tenantId: TENANT, userId };
  await rig.authpipe.importConnection({ ...ref, accessToken: tokens.access_token, refreshToken: tokens.refresh_token, expiresAt: Date.now() + 60_000 });
  rig.planted.push(token('access_token', tokens.access_token), token('refresh_token', tokens.refresh_token));
  return { ref, accessToken: tokens.access_token };
}

async function served(rig: FlowRig, ref: ConnectionRef): Promise<string> {
  const { credential } = await rig.authpipe.getCredential(ref);
  if (!rig.planted.some((p) => p.value === credential)) rig.planted.push(token('access_token', credential));
  return credential;
}

/** What the flow did, to assert on. */
export interface FlowOutcome {
  refs: Record<keyof typeof USERS, ConnectionRef>;
  /** getCredential calls made after the first of each connection (memo hits, if the memo is on). */
  warmCalls: number;
}

/**
 * The flow: each step waits for its own outcome (the status it leaves), so that every record
 * and counter it causes exists once this resolves (records may still be on their way to JS).
 */
export async function runFlow(rig: FlowRig): Promise<FlowOutcome> {
  const { authpipe, oidc } = rig;
  // Memo hits: the first call fills the memo, the next ones are served from it.
  const ok = (await importKnown(rig, USERS.ok)).ref;
  await served(rig, ok);
  for (let i = 0; i < 3; i++) await served(rig, ok);

  // A refresh that succeeds, then one the server answers 500 (transient: degraded, retried later).
  expectStatus((await authpipe.refreshConnection(ok)).status, 'active', 'the refresh');
  await served(rig, ok);
  await oidc.injectFaults([{ status: 500 }]);
  expectStatus((await authpipe.refreshConnection(ok)).status, 'degraded', 'the refresh answered 500');

  // A revocation: the user revokes the app at the server, and the next refresh hears invalid_grant.
  const revoked = await importKnown(rig, USERS.revoked);
  await oidc.revoke(revoked.accessToken);
  expectStatus((await authpipe.refreshConnection(revoked.ref)).status, 'revoked', 'the refresh of a revoked grant');

  // Probes: one of a live token, one of a token the server no longer knows.
  const probed = await importKnown(rig, USERS.probed);
  expectStatus((await authpipe.checkConnection(probed.ref)).status, 'active', 'the probe');
  await oidc.revoke(probed.accessToken);
  expectStatus((await authpipe.checkConnection(probed.ref)).status, 'revoked', 'the probe of a revoked token');

  // Key rotation of the tenant (re-seals its connections; serving goes on).
  await authpipe.rotateTenantKey(TENANT);
  await served(rig, ok);
  return { refs: { ok, revoked: revoked.ref, probed: probed.ref }, warmCalls: 3 };
}

function expectStatus(actual: string, expected: string, what: string): void {
  if (actual !== expected) throw new Error(`${what} left the connection ${actual}, not ${expected}`);
}

/** Polls `check` (no fixed sleep: each poll waits for the event loop) until it returns a value, or throws after `timeoutMs`. */
export async function until<T>(what: string, check: () => Promise<T | undefined> | T | undefined, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
