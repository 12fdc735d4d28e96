// @authpipe/react in a real browser: the web demo (`npm run demo:web`) in Debian's Chromium,
// once with React 19 and once with React 18. Chromium's own popup blocker stays on (Playwright
// turns it off by default), so "the popup is not blocked" means what it says.
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { startWebDemo, type WebDemo } from '../examples/web/server';
import { newKey } from './helpers';

const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = join(__dirname, '..', 'artifacts');
const available = existsSync(CHROMIUM);
if (!available && process.env.CI) throw new Error(`${CHROMIUM} is missing: .ci/run installs Debian's chromium`);
const maybe = available ? describe : describe.skip;
if (!available) console.warn(`web demo browser tests skipped: no ${CHROMIUM} (apt-get install chromium)`);

let browser: Browser;
beforeAll(async () => {
  if (!available) return;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    ignoreDefaultArgs: ['--disable-popup-blocking'],
    // No name resolves but loopback: Chromium's own resolver would otherwise ask the network's
    // nameserver for its background services (scripts/offline/run refuses and reports that).
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1'],
  });
});
afterAll(async () => browser?.close());

test('with an Attio client id and secret in the environment, the demo connects the real Attio, not the sandbox', async () => {
  const env = { ATTIO_CLIENT_ID: 'real-client-id', ATTIO_CLIENT_SECRET: 'real-secret', AUTHPIPE_STORE: ':memory:', AUTHPIPE_MASTER_KEY: newKey() };
  const demo = await startWebDemo({ port: 0, env });
  try {
    expect(demo.sandbox).toBeNull();
    const { token } = await demo.authpipe.createConnectSession({ tenantId: 'org_demo', userId: 'user_real' });
    const start = await fetch(`${demo.origin}/authpipe/connect/attio`, { method: 'POST', body: new URLSearchParams({ session: token }), redirect: 'manual' });
    const authorize = new URL(start.headers.get('location')!);
    expect(authorize.origin + authorize.pathname).toBe('https://app.attio.com/authorize');
    expect(authorize.searchParams.get('client_id')).toBe('real-client-id');
    expect(authorize.searchParams.get('redirect_uri')).toBe(`${demo.origin}/authpipe/callback/attio`);
  } finally {
    await demo.close();
  }
});

maybe.each(['19', '18'] as const)('the web demo on React %s', (react) => {
  let demo: WebDemo;
  let context: BrowserContext;
  let page: Page;

  beforeAll(async () => {
    demo = await startWebDemo({ port: 0, react, env: {} });
  });
  afterAll(async () => demo?.close());

  // Each test is a new browser profile: a new signed-in demo user.
  beforeEach(async () => {
    context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
    page = await context.newPage();
    const errors: string[] = [];
    page.on('pageerror', (err) => errors.push(err.message));
    await page.goto(`${demo.origin}/`);
    await page.locator('#no-connections').waitFor();
    expect(errors).toEqual([]);
  });
  afterEach(async () => context?.close());

  const button = () => page.getByRole('button', { name: 'Connect Attio' });
  const events = () => page.locator('#events').innerText();
  async function userId(): Promise<string> {
    const cookie = (await context.cookies()).find((c) => c.name === 'demo_user');
    if (!cookie) throw new Error('not signed in');
    return cookie.value;
  }
  /** Clicks Allow or Deny on the sandbox's consent page; resolves once the popup has closed. */
  async function decide(popup: Page, choice: 'allow' | 'deny'): Promise<void> {
    const closed = popup.waitForEvent('close');
    await popup.locator(`#${choice}`).click();
    await closed;
  }
  /**
   * The demo in a new tab that Playwright has run nothing in. Each Playwright evaluate counts as a
   * user gesture, which Chromium honours for 5 s; this tab has had none.
   */
  async function untouchedTab(): Promise<Page> {
    const tab = await context.newPage();
    await Promise.all([tab.waitForResponse((res) => res.url().endsWith('/api/connections')), tab.goto(`${demo.origin}/`)]);
    return tab;
  }
  /** Runs `expression` in `tab` as the page's own script would, without user activation. */
  async function evaluateWithoutUserActivation(tab: Page, expression: string): Promise<unknown> {
    const cdp = await context.newCDPSession(tab);
    const { result } = await cdp.send('Runtime.evaluate', { expression, userGesture: false, awaitPromise: true, returnByValue: true });
    return result.value;
  }
  /** The flow id the page sent to the handler, read off the POST that carries it. */
  function flowIdOfNextConnect(): Promise<string> {
    // The form POST is the popup's request, so it is the context that sees it.
    return context
      .waitForEvent('request', (req) => req.url().endsWith('/authpipe/connect/attio') && req.method() === 'POST')
      .then((req) => new URLSearchParams(req.postData() ?? '').get('flow') ?? '');
  }

  test('keyboard: Enter opens the popup, the user allows, onSuccess gets the workspace and no token', async () => {
    await button().focus();
    const [popup] = await Promise.all([page.waitForEvent('popup'), page.keyboard.press('Enter')]);
    expect(await button().getAttribute('aria-busy')).toBe('true');
    await decide(popup, 'allow');

    await page.locator('#connections .workspace').filter({ hasText: 'Acme Corp' }).waitFor();
    expect(await page.locator('#connections .status').innerText()).toBe('active');
    expect(await page.locator('#connections .latency').innerText()).toMatch(/^\d+(\.\d)? (ns|µs)$/);
    const log = await events();
    expect(log).toMatch(/^onSuccess\(\{.*"provider": "attio".*"name": "Acme Corp"/);
    expect(await button().getAttribute('aria-busy')).toBe('false');
    // Focus is back on the button.
    expect(await page.evaluate('document.activeElement?.textContent')).toBe('Connect Attio');

    // The browser saw metadata only; the server holds the token.
    const issued = demo.sandbox!.issuedTokens.at(-1)!;
    expect(await page.content()).not.toContain(issued);
    expect(log).not.toContain(issued);
    const { credential } = await demo.authpipe.getCredential({ provider: 'attio', tenantId: 'org_demo', userId: await userId() });
    expect(credential).toBe(issued);

    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, `web-demo-connected-react${react}.png`), fullPage: true });
  });

  test('a getSessionToken that takes 300 ms: the popup still opens, and the flow completes', async () => {
    // A slow backend: the app's session route answers after 300 ms.
    await page.route('**/api/connect-session', async (route) => {
      await new Promise((resolve) => setTimeout(resolve, 300));
      await route.continue();
    });
    // The blocker is on: a window.open outside a click is refused.
    expect(await evaluateWithoutUserActivation(await untouchedTab(), "window.open('about:blank') === null")).toBe(true);

    const [popup] = await Promise.all([page.waitForEvent('popup'), button().click()]);
    await decide(popup, 'allow');
    await page.locator('#connections .workspace').filter({ hasText: 'Acme Corp' }).waitFor();
    expect(await events()).toMatch(/^onSuccess\(/);
  });

  test('consent denied at the provider: onError with AUTHORIZATION_DENIED', async () => {
    const [popup] = await Promise.all([page.waitForEvent('popup'), button().click()]);
    await decide(popup, 'deny');
    await page.locator('#events').waitFor();
    expect(await events()).toMatch(/^onError\(\{ "code": "AUTHORIZATION_DENIED", "message": "The authorization was declined\. You can connect again\." \}\)$/);
    expect(await button().getAttribute('data-status')).toBe('error');
    expect(await page.locator('#no-connections').count()).toBe(1);
  });

  test('the user closes the popup: onClose, not an error, and focus returns to the button', async () => {
    const [popup] = await Promise.all([page.waitForEvent('popup'), button().click()]);
    await popup.locator('#allow').waitFor();
    await page.evaluate('document.activeElement?.blur()');
    await popup.close();
    await page.locator('#events').waitFor();
    expect(await events()).toBe('onClose()');
    expect(await button().getAttribute('data-status')).toBe('idle');
    expect(await page.evaluate('document.activeElement?.textContent')).toBe('Connect Attio');
  });

  test('a message from another origin, or from the right origin with the wrong flow id, is ignored; the flow then completes', async () => {
    const flowId = flowIdOfNextConnect();
    const [popup] = await Promise.all([page.waitForEvent('popup'), button().click()]);
    await popup.locator('#allow').waitFor();
    const forged = { type: 'authpipe:connect', ok: true, connection: { provider: 'attio', tenantId: 'org_demo', userId: 'someone', status: 'active', scopes: [], account: { id: 'x', name: 'Forged Inc' } } };
    // From the popup while it shows the provider's page: the right window, the wrong origin.
    await popup.evaluate(`window.opener.postMessage(${JSON.stringify({ ...forged, flowId: await flowId })}, '*')`);

    // From the popup at the app's origin with another flow id. A browser does not let a test
    // intercept a redirect's next hop, so Allow's answer (the redirect to the callback) is taken
    // over: the popup goes to a stand-in page on the app's origin, which posts, then goes on to
    // the real callback.
    let standIns = 0;
    await popup.route(
      (url) => url.searchParams.get('decision') === 'allow',
      async (route) => {
        const callback = (await route.fetch({ maxRedirects: 0 })).headers().location!;
        const standIn = `${demo.origin}/stand-in?next=${encodeURIComponent(callback)}`;
        await route.fulfill({ contentType: 'text/html', body: `<script>location.href = ${JSON.stringify(standIn)};</script>` });
      },
    );
    await popup.route(
      (url) => url.pathname === '/stand-in',
      async (route) => {
        standIns++;
        const wrongFlow = JSON.stringify({ ...forged, flowId: 'A'.repeat(22) });
        const script = `window.opener.postMessage(${wrongFlow}, location.origin); location.replace(new URLSearchParams(location.search).get('next'));`;
        await route.fulfill({ contentType: 'text/html', body: `<!doctype html><script>${script}</script>` });
      },
    );
    await decide(popup, 'allow');
    await page.locator('#connections .workspace').filter({ hasText: 'Acme Corp' }).waitFor();
    expect(standIns).toBe(1);
    const log = await events();
    expect(log.split('\n')).toHaveLength(1);
    expect(log).toContain('"name": "Acme Corp"');
    expect(log).not.toContain('Forged');
  });

  test("redirect mode in a tab another page opened: the tab is not closed, and reports on its return", async () => {
    const [tab] = await Promise.all([context.waitForEvent('page'), page.evaluate("window.open('/', '_blank')")]);
    await tab.locator('#no-connections').waitFor();
    expect(await tab.evaluate('window.opener !== null')).toBe(true);
    await tab.getByLabel('full-page redirect instead of a popup').check();
    await tab.getByRole('button', { name: 'Connect Attio' }).click();
    await tab.locator('#allow').click();
    await tab.waitForURL(`${demo.origin}/`);
    await tab.locator('#connections .workspace').filter({ hasText: 'Acme Corp' }).waitFor();
    expect(tab.isClosed()).toBe(false);
    expect(await tab.locator('#events').innerText()).toMatch(/^onSuccess\(/);
  });

  test('popups blocked: the page redirects instead, and the return page reports once', async () => {
    // A click that is not the user's (no user activation): Chromium's blocker refuses the popup.
    const tab = await untouchedTab();
    const navigated = tab.waitForURL((url) => url.origin === demo.sandbox!.origin);
    await evaluateWithoutUserActivation(tab, "document.querySelector('button.connect').click()");
    await navigated;
    expect(context.pages()).toHaveLength(2); // the first page and this tab: no popup
    await tab.locator('#allow').click();

    await tab.waitForURL(`${demo.origin}/`);
    await tab.locator('#connections .workspace').filter({ hasText: 'Acme Corp' }).waitFor();
    expect(await tab.locator('#events').innerText()).toMatch(/^onSuccess\(\{.*"name": "Acme Corp"/);
    expect(tab.url()).toBe(`${demo.origin}/`); // the outcome left the address bar
    await tab.reload();
    await tab.locator('#connections').waitFor();
    expect(await tab.locator('#events').count()).toBe(0); // reported once, not again on reload
  });
});
