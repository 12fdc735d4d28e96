// A provider that echoes everything it is sent into its error answers (some token endpoints
// do: "invalid refresh token 'xyz'"). Whatever it echoes must not reach an error message,
// `lastError`, an event, the store or the callback page: on the code exchange, the refresh
// grant, the health probe and the revocation.
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { Authpipe, AuthpipeError, type ConnectResultMessage } from '..';
import { closeServer, listenOnLoopback, newKey, opaque, postgresStore, psql, STORE_KIND, tempDir } from './helpers';

/** Values a request carries that are public: the protocol's own words, and the redirect URI (added below). */
const NOT_SECRET = new Set(['authorization_code', 'refresh_token', 'access_token', 'application/json']);

interface Echo {
  origin: string;
  /** Every value any request carried: parameters, the raw Authorization header, Basic's parts. */
  received: Set<string>;
  /** How the token endpoint answers the next requests (then 400 invalid_grant). */
  tokenAnswers: Array<(values: string[]) => { status: number; body: object }>;
  close(): Promise<void>;
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** The echoing provider: authorize redirects straight back; token, identity and revoke echo. */
async function startEcho(): Promise<Echo> {
  const received = new Set<string>();
  const tokenAnswers: Echo['tokenAnswers'] = [];
  const server: Server = createServer((req, res) => {
    void (async () => {
      const url = new URL(req.url ?? '/', 'http://echo.invalid');
      if (url.pathname === '/authorize') {
        const back = new URL(url.searchParams.get('redirect_uri')!);
        back.searchParams.set('code', `code_${opaque()}`);
        back.searchParams.set('state', url.searchParams.get('state')!);
        res.writeHead(302, { location: back.href }).end();
        return;
      }
      const body = await readBody(req);
      const values: string[] = [];
      const keep = (v: string | undefined) => {
        if (v) {
          values.push(v);
          if (!NOT_SECRET.has(v)) received.add(v);
        }
      };
      for (const [, v] of url.searchParams) keep(v);
      for (const [, v] of new URLSearchParams(body)) keep(v);
      const authorization = req.headers.authorization;
      keep(authorization);
      if (authorization?.startsWith('Basic ')) {
        const pair = Buffer.from(authorization.slice(6), 'base64').toString('utf8');
        pair.split(':').map(decodeURIComponent).forEach(keep);
        keep(authorization.slice(6));
      } else if (authorization) {
        keep(authorization.split(' ')[1]);
      }
      keep(body);
      const echo = `ECHO got ${values.map((v) => `'${v}'`).join(' and ')} from you`;
      const answer =
        url.pathname === '/token'
          ? (tokenAnswers.shift() ?? (() => ({ status: 400, body: { error: 'invalid_grant', error_description: echo } })))(values)
          : { status: 400, body: { error: 'invalid_request', error_description: echo } };
      res.writeHead(answer.status, { 'content-type': 'application/json' }).end(JSON.stringify(answer.body));
    })();
  });
  const origin = await listenOnLoopback(server);
  return {
    origin,
    received,
    tokenAnswers,
    close: () => closeServer(server),
  };
}

let echo: Echo;
let app: Server;
let appOrigin: string;
let authpipe: Authpipe;
const storeFile = STORE_KIND === 'sqlite' ? join(tempDir(), 'echo.db') : undefined;
let schema: string | undefined;
const events: unknown[] = [];
const outputs: string[] = [];

/** Everything the library let out, as text: errors, returned objects, events. */
function record(value: unknown): void {
  outputs.push(typeof value === 'string' ? value : `${inspect(value, { depth: 10 })}\n${JSON.stringify(value)}`);
  if (value instanceof Error) outputs.push(value.message, String(value.stack));
}

/** What the store holds: the SQLite file with its WAL, or the PostgreSQL rows' error columns. */
function storeText(): string {
  if (storeFile) {
    return ['', '-wal', '-shm']
      .map((suffix) => storeFile + suffix)
      .filter(existsSync)
      .map((file) => readFileSync(file).toString('latin1'))
      .join('\n');
  }
  return psql(`SELECT coalesce(string_agg(coalesce(last_error_code, '') || ' ' || coalesce(last_error_message, ''), ' '), '') FROM ${schema}.connections`);
}

function expectNothingEchoed(where: string, text: string): void {
  for (const value of echo.received) {
    if (text.includes(value)) throw new Error(`${where} contains a value the request sent (${value.length} chars, starting ${value.slice(0, 4)}...)`);
  }
}

beforeAll(async () => {
  echo = await startEcho();
  app = createServer();
  appOrigin = await listenOnLoopback(app);
  NOT_SECRET.add(`${appOrigin}/authpipe/callback/echo`); // the redirect URI, public by design
  let store: string;
  if (storeFile) {
    store = storeFile;
  } else {
    store = postgresStore();
    schema = new URL(store).searchParams.get('schema')!;
  }
  authpipe = new Authpipe({
    store,
    masterKey: newKey(),
    httpTimeoutMs: 2000,
    providers: {
      echo: {
        authorizeUrl: `${echo.origin}/authorize`,
        tokenUrl: `${echo.origin}/token`,
        revokeUrl: `${echo.origin}/revoke`,
        identityUrl: `${echo.origin}/self`,
        clientId: `client_${opaque()}`,
        clientSecret: `secret_${opaque()}`,
        redirectUri: `${appOrigin}/authpipe/callback/echo`,
      },
    },
  });
  for (const name of ['connection.created', 'connection.refreshed', 'connection.refresh_failed', 'connection.degraded', 'connection.revoked', 'connection.recovered', 'connection.deleted'] as const) {
    authpipe.on(name, (event: unknown) => events.push(event));
  }
  app.on('request', authpipe.handler({ appOrigin }));
  await authpipe.ready();
});

afterAll(async () => {
  await authpipe.close();
  await closeServer(app);
  await echo.close();
});

const user = { provider: 'echo', tenantId: 'org_echo', userId: 'user_1' };

test('the code exchange: the error names the code, the page shows our words only', async () => {
  const { token } = await authpipe.createConnectSession({ tenantId: user.tenantId, userId: user.userId });
  const start = await fetch(`${appOrigin}/authpipe/connect/echo?session=${token}`, { redirect: 'manual' });
  const cookie = start.headers.getSetCookie()[0]!.split(';')[0]!;
  const authorize = await fetch(start.headers.get('location')!, { redirect: 'manual' });
  const callback = authorize.headers.get('location')!;
  const page = await fetch(callback, { headers: { cookie } });
  const html = await page.text();
  expect(page.status).toBe(400);
  const result = JSON.parse(/var result = (\{.*?\});\n/s.exec(html)![1]!) as ConnectResultMessage;
  expect(result).toMatchObject({ ok: false, error: { code: 'CODE_EXCHANGE_FAILED' } });
  expect(html).not.toContain('ECHO'); // no provider text at all on the page
  expectNothingEchoed('the callback page', html);
  record(html);

  // The same failure through handleCallback: the app's error keeps the scrubbed description.
  const { url } = await authpipe.startConnect(user);
  const back = await fetch(url, { redirect: 'manual' });
  const err = await authpipe.handleCallback({ url: back.headers.get('location')! }).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(AuthpipeError);
  expect((err as AuthpipeError).code).toBe('CODE_EXCHANGE_FAILED');
  // What is public (the grant type, the redirect URI) is kept; every secret sent is cut out.
  expect((err as AuthpipeError).message).toMatch(/refused the authorization code: invalid_grant \(ECHO got 'authorization_code' and '\[redacted\]' and /);
  record(err);
});

test('the refresh grant: transient and terminal failures, lastError, events, the store', async () => {
  const refreshToken = `rt_${opaque()}`;
  await authpipe.importConnection({ ...user, accessToken: `at_${opaque()}`, refreshToken, expiresAt: new Date(Date.now() + 3_600_000) });
  // A 503 that echoes the refresh token into `error` itself, then the default 400 invalid_grant.
  echo.tokenAnswers.push((values) => ({ status: 503, body: { error: refreshToken, error_description: `ECHO ${values.join(' ')}` } }));
  const degraded = await authpipe.refreshConnection(user);
  expect(degraded.status).toBe('degraded');
  expect(degraded.lastError).toMatchObject({ code: 'redacted' });
  record(degraded);
  record(storeText());

  const revoked = await authpipe.refreshConnection(user);
  expect(revoked.status).toBe('revoked');
  expect(revoked.lastError?.code).toBe('invalid_grant');
  expect(revoked.lastError?.message).toContain('[redacted]');
  record(revoked);
  record(await authpipe.listConnections({ tenantId: user.tenantId }));
  expect(echo.received.has(refreshToken)).toBe(true); // the provider did see it
});

test('the health probe and the revocation', async () => {
  const probed = { ...user, userId: 'user_2' };
  await authpipe.importConnection({ ...probed, accessToken: `at_${opaque()}`, refreshToken: `rt_${opaque()}` });
  const checked = await authpipe.checkConnection(probed);
  expect(checked.status).toBe('degraded');
  expect(checked.lastError?.message).toContain('[redacted]');
  record(checked);
  record(storeText());

  const deleted = await authpipe.deleteConnection(probed);
  expect(deleted).toMatchObject({ deleted: true, revocation: 'failed' });
  expect(deleted.revocationError).toContain('[redacted]');
  record(deleted);
});

test('nothing the provider was sent is anywhere the library let it out', () => {
  record(events);
  record(storeText());
  expect(events.length).toBeGreaterThan(0);
  expect(echo.received.size).toBeGreaterThan(8);
  outputs.forEach((text, i) => expectNothingEchoed(`output ${i}`, text));
});
