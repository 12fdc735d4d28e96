import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

export interface OidcStats {
  tokenRequests: number;
  refreshGrants: number;
  /** Token requests refused with invalid_grant (a reused or revoked refresh token). */
  invalidGrants: number;
  /** Introspection requests from Authpipe's health probes. */
  probes: number;
}

/** The pair ledger's record of one grant (see oidc-server.mjs): sequence numbers of token pairs, never tokens. */
export interface GrantLedger {
  /** The pair issued last: its number (0 from the code exchange), the worker whose request got it (`null`: untagged), when (ms). */
  latest: { seq: number; worker: number | null; at: number };
  /** The refresh token presented last: which pair it came from, by whom, and what came of it (`rotated`, or the invalid_grant detail). */
  lastRefresh?: { seq: number; worker: number | null; at: number; outcome: string };
  /** The first refresh token presented by an untagged client (the checking instance) since the last hold began. */
  checkRefresh?: { seq: number; worker: number | null; at: number; outcome: string };
}

/** A refresh the server answered: its grant, the new pair's number, the worker that asked. */
export interface Rotation {
  grantId: string;
  seq: number;
  worker: number | null;
}

export interface OidcProvider {
  issuer: string;
  clientId: string;
  clientSecret: string;
  /** Settings for `new Authpipe({ providers: { oidc: ... } })` pointing at this server. */
  providerConfig(redirectUri: string): { issuer: string; clientId: string; clientSecret: string; redirectUri: string; scopes: string[] };
  /** Settings with explicit endpoints whose token requests the ledger records as `worker`'s. */
  workerConfig(redirectUri: string, worker: number): Record<string, unknown>;
  /** The pair ledger, by grant id. */
  ledger(): Promise<Record<string, GrantLedger>>;
  /** The access token last presented by an Authpipe probe: its grant and pair number, and a count of such probes. */
  lastProbe(): Promise<{ count: number; grantId: string | null; seq: number | null } | null>;
  /** While on, token requests not tagged with a worker are answered 503 without reaching the provider. */
  holdUntagged(on: boolean): Promise<void>;
  /** Calls `listener` for each refresh answered, once its response is sent; returns the unsubscribe. */
  onRotation(listener: (rotation: Rotation) => void): () => void;
  /** RFC 7662 introspection of a token, as the resource server would do it. */
  introspect(token: string): Promise<{ active: boolean; [claim: string]: unknown }>;
  /**
   * Whether an access token was valid at `returnedAt` (ms): the server's introspection says so
   * ('active'), or, when the token expired between `returnedAt` and the introspection (its expiry
   * is whole seconds, so one returned near its end can die a moment later), the server's own
   * record of it does ('expired-since'). Otherwise 'invalid'.
   */
  validAt(token: string, returnedAt: number): Promise<'active' | 'expired-since' | 'invalid'>;
  /** The server's own record of an access token it issued: when it expires (ms) and whether its grant was revoked. */
  tokenRecord(token: string): Promise<{ expiresAt: number; grantRevoked: boolean } | undefined>;
  /** RFC 7009 revocation of a token (the user revoking the app). */
  revoke(token: string): Promise<void>;
  /** Shapes the next POST /token answers (see oidc-server.mjs). */
  injectFaults(faults: ReadonlyArray<Record<string, unknown>>): Promise<void>;
  stats(): Promise<OidcStats>;
  /** Every invalid_grant so far, as evidence: when (ms), why, and when a reused refresh token was first spent (ms, to the second). */
  refusals(): Promise<Array<{ at: number; detail?: string; spentAt?: number }>>;
  /** A whole code + PKCE flow done directly (not through Authpipe): the token response. */
  obtainTokens(redirectUri: string): Promise<{ access_token: string; refresh_token: string; expires_in: number }>;
  /** A refresh grant sent directly (not through Authpipe, untagged): the token response, or the error. */
  refreshDirectly(refreshToken: string): Promise<{ access_token?: string; refresh_token?: string; error?: string }>;
  close(): Promise<void>;
}

/** Starts oidc-provider (see oidc-server.mjs) in a child process. */
export async function startOidcProvider(options: { redirectUris: string[]; accessTokenTtl?: number }): Promise<OidcProvider> {
  const clientId = 'authpipe-test';
  const clientSecret = 'a-long-test-secret-that-is-not-secret-at-all-0123456789';
  const child = spawn(process.execPath, [join(__dirname, 'oidc-server.mjs'), JSON.stringify({ clientId, clientSecret, ...options })], {
    stdio: ['pipe', 'pipe', 'ignore'], // its stderr is dev-mode notices
  });
  const lines = createInterface({ input: child.stdout! });
  const [line] = (await once(lines, 'line')) as [string];
  const { issuer } = JSON.parse(line) as { issuer: string };
  const rotationListeners = new Set<(rotation: Rotation) => void>();
  lines.on('line', (l) => {
    const { rotated } = JSON.parse(l) as { rotated?: Rotation };
    if (rotated) for (const listener of rotationListeners) listener(rotated);
  });
  const basic = `Basic ${Buffer.from(`${encodeURIComponent(clientId)}:${encodeURIComponent(clientSecret)}`).toString('base64')}`;
  const introspect = async (token: string) => {
    const res = await fetch(`${issuer}/token/introspection`, {
      method: 'POST',
      headers: { authorization: basic, 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token }),
    });
    return (await res.json()) as { active: boolean };
  };
  const tokenRecord = async (token: string) => {
    const res = await fetch(`${issuer}/__token?${new URLSearchParams({ token })}`);
    if (!res.ok) return undefined;
    const { exp, grantRevoked } = (await res.json()) as { exp: number; grantRevoked: boolean };
    return { expiresAt: exp * 1000, grantRevoked };
  };
  return {
    issuer,
    clientId,
    clientSecret,
    providerConfig: (redirectUri) => ({ issuer, clientId, clientSecret, redirectUri, scopes: ['api:read', 'offline_access'] }),
    workerConfig: (redirectUri, worker) => ({
      issuer,
      clientId,
      clientSecret,
      redirectUri,
      scopes: ['api:read', 'offline_access'],
      authorizeUrl: `${issuer}/auth`,
      tokenUrl: `${issuer}/w${worker}/token`,
      pkce: true,
    }),
    async ledger() {
      return (await (await fetch(`${issuer}/__ledger`)).json()) as Record<string, GrantLedger>;
    },
    async lastProbe() {
      return (await (await fetch(`${issuer}/__lastProbe`)).json()) as { count: number; grantId: string | null; seq: number | null } | null;
    },
    async holdUntagged(on) {
      await fetch(`${issuer}/__hold`, { method: 'POST', body: on ? 'on' : 'off' });
    },
    onRotation(listener) {
      rotationListeners.add(listener);
      return () => rotationListeners.delete(listener);
    },
    introspect,
    async validAt(token, returnedAt) {
      if ((await introspect(token)).active) return 'active';
      const record = await tokenRecord(token);
      return record && !record.grantRevoked && record.expiresAt > returnedAt ? 'expired-since' : 'invalid';
    },
    tokenRecord,
    async revoke(token) {
      await fetch(`${issuer}/token/revocation`, {
        method: 'POST',
        headers: { authorization: basic, 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ token }),
      });
    },
    async injectFaults(faults) {
      await fetch(`${issuer}/__faults`, { method: 'POST', body: JSON.stringify(faults) });
    },
    async stats() {
      return (await (await fetch(`${issuer}/__stats`)).json()) as OidcStats;
    },
    async refusals() {
      return (await (await fetch(`${issuer}/__refusals`)).json()) as Array<{ at: number; detail?: string; spentAt?: number }>;
    },
    async obtainTokens(redirectUri) {
      const verifier = randomBytes(32).toString('base64url');
      const authorize = new URL(`${issuer}/auth`);
      authorize.search = new URLSearchParams({
        response_type: 'code',
        client_id: clientId,
        redirect_uri: redirectUri,
        scope: 'api:read offline_access',
        state: randomBytes(16).toString('base64url'),
        code_challenge: createHash('sha256').update(verifier).digest('base64url'),
        code_challenge_method: 'S256',
      }).toString();
      const code = new URL(await followUntil(authorize.href, redirectUri)).searchParams.get('code')!;
      const res = await fetch(`${issuer}/token`, {
        method: 'POST',
        headers: { authorization: basic, 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: verifier }),
      });
      return (await res.json()) as { access_token: string; refresh_token: string; expires_in: number };
    },
    async refreshDirectly(refreshToken) {
      const res = await fetch(`${issuer}/token`, {
        method: 'POST',
        headers: { authorization: basic, 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: refreshToken }),
      });
      return (await res.json()) as { access_token?: string; refresh_token?: string; error?: string };
    },
    async close() {
      const exited = once(child, 'exit');
      child.stdin!.end();
      await exited;
    },
  };
}

/** Follows redirects like a browser (with a path-aware cookie jar) until one leaves for `stopAt`'s origin. */
export async function followUntil(url: string, stopAt: string): Promise<string> {
  const jar = new Map<string, { value: string; path: string }>();
  for (let hop = 0; hop < 15; hop++) {
    const path = new URL(url).pathname;
    const cookie = [...jar.entries()]
      .filter(([, c]) => path === c.path || path.startsWith(c.path.endsWith('/') ? c.path : `${c.path}/`) || c.path === '/')
      .map(([k, c]) => `${k.split('\0')[0]}=${c.value}`)
      .join('; ');
    const res = await fetch(url, { redirect: 'manual', headers: cookie ? { cookie } : {} });
    for (const set of res.headers.getSetCookie()) {
      const [pair, ...attrs] = set.split(';').map((s) => s.trim());
      const [name, ...value] = pair!.split('=');
      const cookiePath = attrs.find((a) => /^path=/i.test(a))?.slice(5) ?? '/';
      const expired = attrs.some((a) => /^expires=/i.test(a) && Date.parse(a.slice(8)) <= Date.now());
      if (expired || value.join('=') === '') jar.delete(`${name}\0${cookiePath}`);
      else jar.set(`${name}\0${cookiePath}`, { value: value.join('='), path: cookiePath });
    }
    const location = res.headers.get('location');
    if (!location) throw new Error(`no redirect from ${path} (HTTP ${res.status}): ${await res.text()}`);
    const next = new URL(location, url).href;
    if (new URL(next).origin === new URL(stopAt).origin) return next;
    url = next;
  }
  throw new Error('too many redirects');
}
