// The connect flow in a real browser (Debian's Chromium through playwright-core): the app page
// opens the handler in a popup, the provider (the Attio sandbox) consents, and the callback page,
// under its strict CSP, posts the result to the opener and closes. Without an opener it sends the
// browser back to the app instead.
import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { chromium, type Browser } from 'playwright-core';
import { Authpipe, type ConnectResultMessage } from '..';
import { createSandbox, type Sandbox } from '../dist/testing';
import { authpipeOnSandbox, closeServer, listenOnLoopback } from './helpers';

const CHROMIUM = '/usr/bin/chromium';
const available = existsSync(CHROMIUM);
if (!available && process.env.CI) throw new Error(`${CHROMIUM} is missing: .ci/run installs Debian's chromium`);
const maybe = available ? describe : describe.skip;
if (!available) console.warn(`browser tests skipped: no ${CHROMIUM} (apt-get install chromium)`);

maybe('the connect popup in Chromium', () => {
  let sandbox: Sandbox;
  let app: Server;
  let appOrigin: string;
  let authpipe: Authpipe;
  let browser: Browser;

  beforeAll(async () => {
    sandbox = await createSandbox({ provider: 'attio', workspace: { name: 'Acme Corp' } });
    app = createServer();
    appOrigin = await listenOnLoopback(app);
    authpipe = authpipeOnSandbox(sandbox, appOrigin);
    const handle = authpipe.handler({ appOrigin, returnTo: '/settings' });
    app.on('request', async (req, res) => {
      if (req.url?.startsWith('/authpipe/')) return handle(req, res);
      // The app's own page: a button that opens the connect popup with a connect session.
      const { token } = await authpipe.createConnectSession({ tenantId: 'org_acme', userId: 'user_browser' });
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(`<!doctype html><title>App</title>
<button id="connect">Connect Attio</button>
<script>
  window.results = [];
  window.addEventListener('message', (e) => { if (e.origin === location.origin) window.results.push(e.data); });
  document.getElementById('connect').onclick = () => window.open('/authpipe/connect/attio?session=${token}', 'authpipe', 'width=480,height=640');
</script>`);
    });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      // No name resolves but loopback: Chromium's own resolver would otherwise ask the network's
    // nameserver for its background services (scripts/offline/run refuses and reports that).
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1'],
    });
  });

  afterAll(async () => {
    await browser?.close();
    await authpipe?.close();
    if (app) await closeServer(app);
    await sandbox?.close();
  });

  test('popup -> provider -> callback page posts the result to the opener and closes', async () => {
    const page = await browser.newPage();
    const violations: string[] = [];
    page.context().on('console', (m) => {
      if (/Content Security Policy|Refused to/.test(m.text())) violations.push(m.text());
    });
    await page.goto(`${appOrigin}/`);
    const [popup] = await Promise.all([page.waitForEvent('popup'), page.click('#connect')]);
    await popup.waitForEvent('close');
    await page.waitForFunction(() => (globalThis as unknown as { results: unknown[] }).results.length > 0);
    const [result] = (await page.evaluate(() => (globalThis as unknown as { results: unknown[] }).results)) as ConnectResultMessage[];
    expect(result).toMatchObject({
      type: 'authpipe:connect',
      ok: true,
      connection: { provider: 'attio', tenantId: 'org_acme', userId: 'user_browser', status: 'active', account: { name: 'Acme Corp' } },
    });
    expect(JSON.stringify(result)).not.toContain(sandbox.issuedTokens.at(-1));
    expect(violations).toEqual([]);
    const { credential } = await authpipe.getCredential({ provider: 'attio', tenantId: 'org_acme', userId: 'user_browser' });
    expect(credential).toBe(sandbox.issuedTokens.at(-1));
  });

  test('without an opener, the callback page sends the browser back to the app', async () => {
    const page = await browser.newPage();
    const { token } = await authpipe.createConnectSession({ tenantId: 'org_acme', userId: 'user_tab' });
    await page.goto(`${appOrigin}/authpipe/connect/attio?session=${token}`);
    await page.waitForURL((url) => url.pathname === '/settings' && url.searchParams.get('authpipe') === 'connected');
    expect((await authpipe.getConnection({ provider: 'attio', tenantId: 'org_acme', userId: 'user_tab' })).status).toBe('active');
  });
});
