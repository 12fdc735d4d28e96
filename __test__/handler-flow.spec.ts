// What the handler hands back to the page that started a flow: the page's flow id (which
// @authpipe/react checks before it believes a result) in the popup's message and in the
// `returnTo` redirect, together with the outcome; the old message shape without one. Each test
// runs through `handler()` on Node's http and through `fetchHandler()` in a Hono app on
// @hono/node-server: one implementation behind both.
import { getRequestListener } from '@hono/node-server';
import { Hono } from 'hono';
import { createServer, type RequestListener, type Server } from 'node:http';
import { Authpipe, type HandlerOptions } from '..';
import { createSandbox, type Sandbox } from '../dist/testing';
import { authpipeOnSandbox, browse, closeServer, listenOnLoopback, posted, redirectedTo } from './helpers';

// No resolveUser here: the options are the same for either kind of request.
type Mount = (authpipe: Authpipe, options: Omit<HandlerOptions, 'resolveUser'>) => RequestListener;

const MOUNTS: Array<[string, Mount]> = [
  ["handler() on Node's http", (authpipe, options) => authpipe.handler(options)],
  [
    'fetchHandler() in Hono',
    (authpipe, options) => {
      const handle = authpipe.fetchHandler(options);
      const hono = new Hono();
      hono.all('/authpipe/*', (c) => handle(c.req.raw));
      return getRequestListener(hono.fetch);
    },
  ],
];

describe.each(MOUNTS)('through %s', (_name, mount) => {
  let sandbox: Sandbox;
  let app: Server;
  let appOrigin: string;
  let authpipe: Authpipe;
  const FLOW = 'Xq3_flow-id_for-a-test';

  beforeAll(async () => {
    sandbox = await createSandbox({ provider: 'attio', workspace: { id: 'ws_42', name: 'Acme Corp' } });
    // The handler is made once the origin is known; until then the server has nothing to serve.
    let listener: RequestListener = (_req, res) => void res.writeHead(503).end();
    app = createServer((req, res) => listener(req, res));
    appOrigin = await listenOnLoopback(app);
    authpipe = authpipeOnSandbox(sandbox, appOrigin);
    listener = mount(authpipe, { appOrigin, returnTo: '/settings?tab=crm' });
  });

  afterAll(async () => {
    await authpipe.close();
    await closeServer(app);
    await sandbox.close();
  });

  async function session(userId: string): Promise<string> {
    return (await authpipe.createConnectSession({ tenantId: 'org_acme', userId })).token;
  }

  /** Starts a flow as a POSTed form (what @authpipe/react sends) and returns the callback page. */
  async function connectWithForm(fields: Record<string, string>, options: { deny?: boolean } = {}) {
    const start = await fetch(`${appOrigin}/authpipe/connect/attio`, { method: 'POST', body: new URLSearchParams(fields), redirect: 'manual' });
    expect(start.status).toBe(302);
    const cookie = start.headers.getSetCookie()[0]!.split(';')[0]!;
    return browse(await sandbox.consent(start.headers.get('location')!, options), cookie);
  }

  test('a flow id given at connect comes back in the message and in the return query, with the connection', async () => {
    const page = await connectWithForm({ session: await session('user_flow'), flow: FLOW });
    const connection = { provider: 'attio', tenantId: 'org_acme', userId: 'user_flow', status: 'active', scopes: expect.any(Array), account: { id: 'ws_42', name: 'Acme Corp' } };
    expect(posted(page.text)).toEqual({ type: 'authpipe:connect', ok: true, connection, flowId: FLOW });

    const back = redirectedTo(page.text);
    expect(back.origin + back.pathname).toBe(`${appOrigin}/settings`);
    expect(back.searchParams.get('tab')).toBe('crm');
    expect(back.searchParams.get('authpipe')).toBe('connected');
    expect(back.searchParams.get('authpipe_flow')).toBe(FLOW);
    expect(JSON.parse(back.searchParams.get('authpipe_connection')!)).toEqual(connection);
    // Metadata only: the token the sandbox issued is nowhere in the page.
    expect(page.text).not.toContain(sandbox.issuedTokens.at(-1));
    const { credential } = await authpipe.getCredential({ provider: 'attio', tenantId: 'org_acme', userId: 'user_flow' });
    expect(credential).toBe(sandbox.issuedTokens.at(-1));
  });

  test('a declined consent carries the flow id and the code, in both forms', async () => {
    const page = await connectWithForm({ session: await session('user_deny'), flow: FLOW }, { deny: true });
    expect(posted(page.text)).toEqual({ type: 'authpipe:connect', ok: false, error: { code: 'AUTHORIZATION_DENIED', message: expect.any(String) }, flowId: FLOW });
    const back = redirectedTo(page.text);
    expect(Object.fromEntries(back.searchParams)).toEqual({
      tab: 'crm',
      authpipe: 'error',
      authpipe_flow: FLOW,
      authpipe_error: 'AUTHORIZATION_DENIED',
      authpipe_message: 'The authorization was declined. You can connect again.',
    });
  });

  test('a refused start (a used session) still names the flow, so the popup reports it', async () => {
    const token = await session('user_used');
    await connectWithForm({ session: token, flow: FLOW });
    const again = await fetch(`${appOrigin}/authpipe/connect/attio?flow=${FLOW}`, { method: 'POST', body: new URLSearchParams({ session: token }), redirect: 'manual' });
    expect(again.status).toBe(400);
    expect(posted(await again.text())).toMatchObject({ ok: false, error: { code: 'SESSION_INVALID' }, flowId: FLOW });
  });

  test('without a flow id the message keeps its old shape', async () => {
    const page = await connectWithForm({ session: await session('user_old') });
    const message = posted(page.text);
    expect(Object.keys(message).sort()).toEqual(['connection', 'ok', 'type']);
    expect(redirectedTo(page.text).searchParams.has('authpipe_flow')).toBe(false);
  });

  test('a flow id that is malformed, or given twice, is refused before anything starts', async () => {
    for (const flow of ['short', 'x'.repeat(129), 'has space in it, here', 'dot.dot.dot.dot.dot.dot', '<script>alert(1)</script>']) {
      const res = await fetch(`${appOrigin}/authpipe/connect/attio`, { method: 'POST', body: new URLSearchParams({ session: await session('user_bad'), flow }), redirect: 'manual' });
      expect(res.status).toBe(400);
      const page = await res.text();
      expect(posted(page)).toMatchObject({ ok: false, error: { code: 'INVALID_ARGUMENT' } });
      expect(posted(page)).not.toHaveProperty('flowId');
      expect(res.headers.getSetCookie()).toEqual([]);
    }
    const twice = await fetch(`${appOrigin}/authpipe/connect/attio?flow=${FLOW}`, { method: 'POST', body: new URLSearchParams({ session: await session('user_bad'), flow: FLOW }), redirect: 'manual' });
    expect(twice.status).toBe(400);
    expect(posted(await twice.text()).ok).toBe(false);
  });

  test('a flow id planted in the cookie by hand is not echoed unless well-formed', async () => {
    const start = await fetch(`${appOrigin}/authpipe/connect/attio`, { method: 'POST', body: new URLSearchParams({ session: await session('user_cookie') }), redirect: 'manual' });
    const binding = start.headers.getSetCookie()[0]!.split(';')[0]!;
    const page = await browse(await sandbox.consent(start.headers.get('location')!), `${binding}.bad<flow>`);
    expect(posted(page.text)).toMatchObject({ ok: true });
    expect(posted(page.text)).not.toHaveProperty('flowId');
  });

  test('flows started side by side in one browser each keep their own cookie', async () => {
    const start = async (userId: string) => {
      const res = await fetch(`${appOrigin}/authpipe/connect/attio`, { method: 'POST', body: new URLSearchParams({ session: await session(userId), flow: `${FLOW}_${userId}` }), redirect: 'manual' });
      return { cookie: res.headers.getSetCookie()[0]!.split(';')[0]!, callback: await sandbox.consent(res.headers.get('location')!) };
    };
    const first = await start('user_tab1');
    const second = await start('user_tab2');
    const jar = `${first.cookie}; ${second.cookie}`;
    expect(posted((await browse(first.callback, jar)).text)).toMatchObject({ ok: true, connection: { userId: 'user_tab1' }, flowId: `${FLOW}_user_tab1` });
    expect(posted((await browse(second.callback, jar)).text)).toMatchObject({ ok: true, connection: { userId: 'user_tab2' }, flowId: `${FLOW}_user_tab2` });
  });

  test('mode=redirect: the callback page redirects even when its window has an opener', async () => {
    const script = (page: string) => /<script[^>]*>([\s\S]*)<\/script>/.exec(page)![1]!;
    const redirected = await connectWithForm({ session: await session('user_redirect'), flow: FLOW, mode: 'redirect' });
    expect(script(redirected.text)).toContain('var answerOpener = false;');
    const popup = await connectWithForm({ session: await session('user_popup'), flow: FLOW, mode: 'popup' });
    expect(script(popup.text)).toContain('var answerOpener = true;');
    const bad = await fetch(`${appOrigin}/authpipe/connect/attio`, { method: 'POST', body: new URLSearchParams({ session: await session('user_mode'), mode: 'iframe' }), redirect: 'manual' });
    expect(bad.status).toBe(400);
    expect(posted(await bad.text())).toMatchObject({ ok: false, error: { code: 'INVALID_ARGUMENT' } });
  });

  test('every answer carries the security headers; unknown routes are 404, a body over 64 KiB a 400', async () => {
    const missing = await fetch(`${appOrigin}/authpipe/nowhere`);
    expect(missing.status).toBe(404);
    const big = await fetch(`${appOrigin}/authpipe/connect/attio`, { method: 'POST', body: new URLSearchParams({ session: 'x'.repeat(70 * 1024) }), redirect: 'manual' });
    expect(big.status).toBe(400);
    expect(posted(await big.text())).toMatchObject({ ok: false, error: { code: 'INVALID_ARGUMENT' } });
    const start = await fetch(`${appOrigin}/authpipe/connect/attio`, { method: 'POST', body: new URLSearchParams({ session: await session('user_headers') }), redirect: 'manual' });
    for (const res of [missing, big, start]) {
      expect(res.headers.get('content-security-policy')).toMatch(/^default-src 'none'; script-src /);
      expect(res.headers.get('referrer-policy')).toBe('no-referrer');
      expect(res.headers.get('cache-control')).toBe('no-store');
    }
  });
});

test('fetchHandler: resolveUser receives the Request (the app reads its own cookie from it)', async () => {
  const sandbox = await createSandbox({ provider: 'attio' });
  const app = createServer();
  const appOrigin = await listenOnLoopback(app);
  const authpipe = authpipeOnSandbox(sandbox, appOrigin);
  const handle = authpipe.fetchHandler({
    appOrigin,
    resolveUser: (request) => (request.headers.get('cookie')?.includes('app_session=alice') ? { tenantId: 'org_hono', userId: 'alice' } : null),
  });
  const hono = new Hono();
  hono.all('/authpipe/*', (c) => handle(c.req.raw));
  app.on('request', getRequestListener(hono.fetch));
  try {
    const refused = await fetch(`${appOrigin}/authpipe/connect/attio`, { redirect: 'manual' });
    expect(posted(await refused.text())).toMatchObject({ ok: false, error: { code: 'SESSION_INVALID' } });
    const start = await fetch(`${appOrigin}/authpipe/connect/attio`, { headers: { cookie: 'app_session=alice' }, redirect: 'manual' });
    const cookie = start.headers.getSetCookie()[0]!.split(';')[0]!;
    const page = await browse(await sandbox.consent(start.headers.get('location')!), cookie);
    expect(posted(page.text)).toMatchObject({ ok: true, connection: { tenantId: 'org_hono', userId: 'alice' } });
    expect((await authpipe.getCredential({ provider: 'attio', tenantId: 'org_hono', userId: 'alice' })).credential).toBe(sandbox.issuedTokens.at(-1));
  } finally {
    await authpipe.close();
    await closeServer(app);
    await sandbox.close();
  }
});
