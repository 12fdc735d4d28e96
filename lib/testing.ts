/**
 * `@authpipe/node/testing`: provider emulators for tests, offline. `createSandbox` starts a real
 * HTTP server on 127.0.0.1 that speaks a provider's documented shapes and enforces what the
 * provider enforces (registered redirect URIs, client authentication, PKCE when a challenge was
 * sent, single-use codes), with controls to revoke tokens, uninstall the app, fail, rate-limit
 * or delay answers.
 *
 * @example
 * import { createSandbox } from '@authpipe/node/testing';
 * const sandbox = await createSandbox({ provider: 'attio' });
 * const authpipe = new Authpipe({ store: ':memory:', masterKey, providers: { attio: sandbox.providerConfig({ redirectUri }) } });
 * const { url } = await authpipe.startConnect({ provider: 'attio', tenantId: 't', userId: 'u', redirectUri });
 * const connection = await authpipe.handleCallback({ url: await sandbox.consent(url) });
 * await sandbox.close();
 */
import { createHash, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import * as args from './args';
import { AuthpipeError } from './errors';
import type { ProviderConfig } from './types';

export interface SandboxOptions {
  /**
   * The provider to emulate. `attio`: tokens without expiry or refresh token, `/v2/self`.
   * `hubspot`: expiring tokens with the refresh grant and RFC 7662 introspection.
   */
  provider: 'attio' | 'hubspot';
  /** hubspot: access-token lifetime in seconds (default 1800, as HubSpot's). */
  accessTokenTtl?: number;
  /** hubspot: whether a refresh returns a new refresh token and retires the old (default false, as HubSpot). */
  rotateRefreshTokens?: boolean;
  clientId?: string;
  clientSecret?: string;
  /** Scopes configured on the emulated app (Attio: reported by `/v2/self`). */
  scopes?: readonly string[];
  workspace?: { id?: string; name?: string; slug?: string };
  /**
   * Whether `/authorize` shows a consent page with Allow and Deny, as a person in a browser sees
   * the provider's (default false: it consents at once). {@link Sandbox.consent} answers it either way.
   */
  consentPage?: boolean;
}

/** Which endpoint a control applies to. */
export type SandboxEndpoint = 'authorize' | 'token' | 'identity' | 'any';

export interface Sandbox {
  /** `http://127.0.0.1:<port>` */
  readonly origin: string;
  readonly clientId: string;
  readonly clientSecret: string;
  readonly authorizeUrl: string;
  readonly tokenUrl: string;
  readonly identityUrl: string;
  /** Settings for `new Authpipe({ providers: { attio: ... } })` pointing at this sandbox. */
  providerConfig(extra?: ProviderConfig): ProviderConfig;
  /**
   * Follows an authorize URL as a consenting user would and returns where the provider sends
   * the browser back (the callback URL, with `code` and `state`, or with `error`).
   */
  consent(authorizeUrl: string, options?: { deny?: boolean }): Promise<string>;
  /** Makes a token dead (`/v2/self` then answers `{ active: false }`). */
  revoke(accessToken: string): void;
  /** The workspace uninstalls the app: every token is dead. */
  uninstall(): void;
  /** Changes the scopes configured on the emulated app (reported by `/v2/self` from now on). */
  setScopes(scopes: readonly string[]): void;
  /** The next `count` requests to `endpoint` answer `status` (with an Attio-style error body). */
  failNext(endpoint: SandboxEndpoint, count: number, status: number): void;
  /** The next `count` requests to `endpoint` answer 429 with `Retry-After: <HTTP date>`. */
  rateLimit(endpoint: SandboxEndpoint, count: number, retryAfter: Date): void;
  /** Every answer from `endpoint` waits `ms` first (0 to stop). */
  delay(endpoint: SandboxEndpoint, ms: number): void;
  /**
   * Issues `count` token sets as if that many users had connected, for importing (hubspot).
   * `expiresIn` overrides the access-token lifetime, in seconds.
   */
  mintTokens(count: number, options?: { expiresIn?: number }): Array<{ accessToken: string; refreshToken: string; expiresAt: Date }>;
  /** Refresh grants answered with new tokens so far. */
  readonly refreshes: number;
  /** Requests received, in order (method and path only). */
  readonly requests: ReadonlyArray<{ method: string; path: string }>;
  /** Access tokens issued so far. */
  readonly issuedTokens: readonly string[];
  close(): Promise<void>;
}

interface PendingCode {
  redirectUri: string;
  challenge: string | null;
  used: boolean;
}

interface Control {
  /** Injected answers, consumed one per request. */
  fail: Array<{ status: number; retryAfter?: string }>;
  delayMs: number;
}

const ENDPOINTS: ReadonlyArray<Exclude<SandboxEndpoint, 'any'>> = ['authorize', 'token', 'identity'];

/**
 * The options, read once and checked for their JS types as the Authpipe calls check theirs
 * (`INVALID_ARGUMENT`), so that a bad one fails here and not inside a request later.
 */
function checkOptions(value: unknown): SandboxOptions {
  const o = args.fields(value, 'options', ['provider', 'accessTokenTtl', 'rotateRefreshTokens', 'clientId', 'clientSecret', 'scopes', 'workspace', 'consentPage']);
  const provider = args.string(o.provider, 'provider');
  if (provider !== 'attio' && provider !== 'hubspot') throw new AuthpipeError('INVALID_ARGUMENT', "provider must be 'attio' or 'hubspot' (the sandboxes there are)");
  const accessTokenTtl = args.optionalInteger(o.accessTokenTtl, 'accessTokenTtl');
  if (accessTokenTtl !== undefined && accessTokenTtl <= 0) throw new AuthpipeError('INVALID_ARGUMENT', 'accessTokenTtl must be a positive number of seconds');
  const w = o.workspace === undefined || o.workspace === null ? undefined : args.fields(o.workspace, 'workspace', ['id', 'name', 'slug'], 'workspace.');
  return {
    provider,
    accessTokenTtl,
    rotateRefreshTokens: args.optionalBoolean(o.rotateRefreshTokens, 'rotateRefreshTokens'),
    clientId: args.optionalString(o.clientId, 'clientId'),
    clientSecret: args.optionalString(o.clientSecret, 'clientSecret'),
    scopes: args.optionalStrings(o.scopes, 'scopes'),
    workspace: w && { id: args.optionalString(w.id, 'workspace.id'), name: args.optionalString(w.name, 'workspace.name'), slug: args.optionalString(w.slug, 'workspace.slug') },
    consentPage: args.optionalBoolean(o.consentPage, 'consentPage'),
  };
}

/** Starts a provider emulator on 127.0.0.1 (a free port). */
export async function createSandbox(sandboxOptions: SandboxOptions): Promise<Sandbox> {
  const options = checkOptions(sandboxOptions);
  const hubspot = options.provider === 'hubspot';
  const paths = hubspot
    ? { authorize: '/oauth/authorize', token: '/oauth/2026-03/token', identity: '/oauth/2026-03/token/introspect' }
    : { authorize: '/authorize', token: '/oauth/token', identity: '/v2/self' };
  const ttl = options.accessTokenTtl ?? 1800;
  const refreshTokens = new Map<string, { active: boolean }>();
  let refreshes = 0;
  const clientId = options.clientId ?? `sandbox-${randomUUID()}`;
  const clientSecret = options.clientSecret ?? randomBytes(24).toString('base64url');
  let scopes = options.scopes ?? ['record_permission:read-write', 'object_configuration:read', 'user_management:read'];
  const workspace = {
    id: options.workspace?.id ?? randomUUID(),
    name: options.workspace?.name ?? 'Acme Sandbox',
    slug: options.workspace?.slug ?? 'acme-sandbox',
  };
  const memberId = randomUUID();
  const registeredRedirects = new Set<string>();
  const codes = new Map<string, PendingCode>();
  const tokens = new Map<string, { active: boolean; iat: number; exp: number | null }>();
  const controls = new Map(ENDPOINTS.map((e) => [e, { fail: [], delayMs: 0 } as Control]));
  const requests: Array<{ method: string; path: string }> = [];
  let uninstalled = false;

  const server: Server = createServer((req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) json(res, 500, { status_code: 500, type: 'internal_error', code: 'internal', message: 'sandbox error' });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', origin);
    requests.push({ method: req.method ?? 'GET', path: url.pathname });
    const endpoint = url.pathname === paths.authorize ? 'authorize' : url.pathname === paths.token ? 'token' : 'identity';
    const control = controls.get(endpoint)!;
    if (control.delayMs > 0) await new Promise((resolve) => setTimeout(resolve, control.delayMs));
    const failure = control.fail.shift();
    if (failure) {
      const headers: Record<string, string> = {};
      if (failure.retryAfter) headers['retry-after'] = failure.retryAfter;
      const body =
        failure.status === 429
          ? { status_code: 429, type: 'rate_limit_error', code: 'rate_limit_exceeded', message: 'Rate limit exceeded, please try again later' }
          : { status_code: failure.status, type: 'internal_error', code: 'sandbox_failure', message: 'Injected failure' };
      return json(res, failure.status, body, headers);
    }
    if (req.method === 'GET' && url.pathname === paths.authorize) return authorize(url, res);
    if (req.method === 'POST' && url.pathname === paths.token) return token(req, res);
    if (hubspot && req.method === 'POST' && url.pathname === paths.identity) return introspect(req, res);
    if (!hubspot && (url.pathname === '/v2/self' || (req.method === 'POST' && url.pathname === '/oauth/introspect'))) return self(req, res);
    json(res, 404, { status_code: 404, type: 'invalid_request_error', code: 'not_found', message: 'Not found' });
  }

  function authorize(url: URL, res: ServerResponse): void {
    const q = url.searchParams;
    const redirectUri = q.get('redirect_uri') ?? '';
    // Never redirect to an unregistered URI: that would be an open redirector.
    if (q.get('client_id') !== clientId) return html(res, 400, 'Unknown client_id');
    if (!registeredRedirects.has(redirectUri)) return html(res, 400, 'redirect_uri is not registered for this app');
    const back = new URL(redirectUri);
    const state = q.get('state');
    if (state !== null) back.searchParams.set('state', state);
    if (q.get('response_type') !== 'code') {
      back.searchParams.set('error', 'unsupported_response_type');
    } else if (options.consentPage && !q.has('decision')) {
      return consentPage(url, res);
    } else if (q.has('decision') && q.get('decision') !== 'allow' && q.get('decision') !== 'deny') {
      return html(res, 400, 'decision must be allow or deny');
    } else if (q.get('decision') === 'deny') {
      back.searchParams.set('error', 'access_denied');
    } else {
      const method = q.get('code_challenge_method');
      if (q.get('code_challenge') !== null && method !== 'S256') {
        back.searchParams.set('error', 'invalid_request');
      } else {
        const code = randomBytes(24).toString('base64url');
        codes.set(code, { redirectUri, challenge: q.get('code_challenge'), used: false });
        back.searchParams.set('code', code);
      }
    }
    res.writeHead(302, { location: back.href, 'cache-control': 'no-store' }).end();
  }

  /** The provider's consent screen: the same request again with `decision=allow` or `deny`. */
  function consentPage(url: URL, res: ServerResponse): void {
    const decide = (decision: string) => {
      const next = new URL(url);
      next.searchParams.set('decision', decision);
      return escapeHtml(next.pathname + next.search);
    };
    const scopes = (url.searchParams.get('scope') ?? '').split(/[\s,]+/).filter(Boolean);
    const name = { attio: 'Attio', hubspot: 'HubSpot' }[options.provider];
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' }).end(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${name} (sandbox): authorize</title>
<style>body{font:15px system-ui,sans-serif;margin:0;display:grid;place-items:center;min-height:100vh;background:#f4f4f6}
main{background:#fff;border:1px solid #ddd;border-radius:12px;padding:24px 28px;max-width:360px}
h1{font-size:18px;margin:0 0 8px}ul{padding-left:20px;color:#444}a{display:inline-block;padding:8px 16px;border-radius:8px;text-decoration:none;margin-right:8px}
#allow{background:#266df0;color:#fff}#deny{border:1px solid #bbb;color:#222}</style></head>
<body><main><h1>Connect to ${escapeHtml(workspace.name)}</h1>
<p>An app asks for access to your ${name} workspace (sandbox).</p>
<ul>${scopes.map((s) => `<li>${escapeHtml(s)}</li>`).join('')}</ul>
<a id="allow" href="${decide('allow')}">Allow</a><a id="deny" href="${decide('deny')}">Deny</a></main></body></html>`);
  }

  async function token(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const form = new URLSearchParams(await body(req));
    const invalid = (error: string, status = 400) => json(res, status, { error, error_description: `sandbox: ${error}` });
    if (form.get('client_id') !== clientId || !equal(form.get('client_secret') ?? '', clientSecret)) return invalid('invalid_client', 401);
    if (hubspot && form.get('grant_type') === 'refresh_token') {
      const presented = form.get('refresh_token') ?? '';
      const state = refreshTokens.get(presented);
      if (!state?.active || uninstalled) return invalid('invalid_grant');
      refreshes++;
      let refreshToken = presented;
      if (options.rotateRefreshTokens) {
        state.active = false;
        refreshToken = issueRefreshToken();
      }
      return json(res, 200, hubspotTokens(issueAccessToken(ttl), refreshToken, ttl));
    }
    if (form.get('grant_type') !== 'authorization_code') return invalid('unsupported_grant_type');
    const code = codes.get(form.get('code') ?? '');
    if (!code || code.used) return invalid('invalid_grant');
    if (form.get('redirect_uri') !== code.redirectUri) return invalid('invalid_grant');
    if (code.challenge !== null) {
      const verifier = form.get('code_verifier') ?? '';
      if (createHash('sha256').update(verifier).digest('base64url') !== code.challenge) return invalid('invalid_grant');
    }
    code.used = true;
    if (hubspot) return json(res, 200, hubspotTokens(issueAccessToken(ttl), issueRefreshToken(), ttl));
    json(res, 200, { access_token: issueAccessToken(null), token_type: 'Bearer' });
  }

  function issueAccessToken(expiresIn: number | null): string {
    const accessToken = randomBytes(30).toString('base64url'); // 40 characters, like Attio's
    const iat = Math.floor(Date.now() / 1000);
    tokens.set(accessToken, { active: true, iat, exp: expiresIn === null ? null : iat + expiresIn });
    return accessToken;
  }

  function issueRefreshToken(): string {
    const refreshToken = `na1-${randomBytes(24).toString('base64url')}`;
    refreshTokens.set(refreshToken, { active: true });
    return refreshToken;
  }

  function hubspotTokens(accessToken: string, refreshToken: string, expiresIn: number) {
    return { token_type: 'bearer', refresh_token: refreshToken, hub_id: 62515, scopes, access_token: accessToken, expires_in: expiresIn };
  }

  async function introspect(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const form = new URLSearchParams(await body(req));
    if (form.get('client_id') !== clientId || !equal(form.get('client_secret') ?? '', clientSecret)) {
      return json(res, 401, { error: 'invalid_client' });
    }
    const state = tokens.get(form.get('token') ?? '');
    const alive = state?.active && !uninstalled && (state.exp === null || state.exp > Date.now() / 1000);
    if (!alive) return json(res, 200, { active: false });
    json(res, 200, { active: true, hub_id: 62515, hub_domain: workspace.slug, scopes, token_type: 'bearer', client_id: clientId, exp: state!.exp });
  }

  function self(req: IncomingMessage, res: ServerResponse): void {
    const presented = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
    const state = presented === undefined ? undefined : tokens.get(presented);
    if (!state) {
      return json(res, 401, { status_code: 401, type: 'authentication_error', code: 'invalid_api_key', message: 'Invalid API key' });
    }
    if (!state.active || uninstalled) return json(res, 200, { active: false });
    json(res, 200, {
      active: true,
      scope: scopes.join(' '),
      client_id: clientId,
      token_type: 'Bearer',
      exp: null,
      iat: state.iat,
      sub: workspace.id,
      aud: clientId,
      iss: 'attio.com',
      authorized_by_workspace_member_id: memberId,
      workspace_id: workspace.id,
      workspace_name: workspace.name,
      workspace_slug: workspace.slug,
      workspace_logo_url: null,
    });
  }

  const targets = (endpoint: SandboxEndpoint) => (endpoint === 'any' ? ENDPOINTS : [endpoint]).map((e) => controls.get(e)!);

  return {
    origin,
    clientId,
    clientSecret,
    authorizeUrl: `${origin}${paths.authorize}`,
    tokenUrl: `${origin}${paths.token}`,
    identityUrl: `${origin}${paths.identity}`,
    providerConfig(extra: ProviderConfig = {}) {
      for (const uri of [extra.redirectUri, ...(extra.redirectUris ?? [])]) if (uri) registeredRedirects.add(uri);
      return { clientId, clientSecret, authorizeUrl: `${origin}${paths.authorize}`, tokenUrl: `${origin}${paths.token}`, identityUrl: `${origin}${paths.identity}`, ...extra };
    },
    mintTokens(count, mintOptions = {}) {
      const expiresIn = mintOptions.expiresIn ?? ttl;
      return Array.from({ length: count }, () => ({
        accessToken: issueAccessToken(expiresIn),
        refreshToken: issueRefreshToken(),
        expiresAt: new Date(Date.now() + expiresIn * 1000),
      }));
    },
    get refreshes() {
      return refreshes;
    },
    async consent(authorizeUrl, consentOptions = {}) {
      const url = new URL(authorizeUrl);
      url.searchParams.set('decision', consentOptions.deny ? 'deny' : 'allow');
      const res = await fetch(url, { redirect: 'manual' });
      const location = res.headers.get('location');
      if (res.status !== 302 || !location) throw new Error(`the sandbox refused the authorization request (HTTP ${res.status}: ${await res.text()})`);
      return location;
    },
    revoke(token) {
      const state = tokens.get(token) ?? refreshTokens.get(token);
      if (state) state.active = false;
    },
    uninstall() {
      uninstalled = true;
    },
    setScopes(next) {
      scopes = [...next];
    },
    failNext(endpoint, count, status) {
      for (const c of targets(endpoint)) for (let i = 0; i < count; i++) c.fail.push({ status });
    },
    rateLimit(endpoint, count, retryAfter) {
      for (const c of targets(endpoint)) for (let i = 0; i < count; i++) c.fail.push({ status: 429, retryAfter: retryAfter.toUTCString() });
    },
    delay(endpoint, ms) {
      for (const c of targets(endpoint)) c.delayMs = ms;
    },
    requests,
    get issuedTokens() {
      return [...tokens.keys()];
    },
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}

function equal(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

function json(res: ServerResponse, status: number, value: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers }).end(JSON.stringify(value));
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function html(res: ServerResponse, status: number, message: string): void {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8' }).end(`<!doctype html><title>Sandbox</title><p>${message}</p>`);
}

async function body(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}
