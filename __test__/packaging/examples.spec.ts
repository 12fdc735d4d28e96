/**
 * The apps in examples/, installed from the packed tarballs and run as their READMEs say: the
 * Express app with `node server.js`, the Next.js app with `next build` then `next start` (the
 * addon kept out of the bundle by `serverExternalPackages`). Each goes through the connect flow
 * with the Attio sandbox to a credential served by `getCredential`, so neither can rot.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { currentPlatform } from '../../lib/platform';
import { ROOT, startLocalRegistry, type LocalRegistry } from '../support/local-registry';
import { followUntil, startOidcProvider } from '../support/oidc';
import { connectWithoutJavaScript, posted, redirectedTo } from '../helpers';
import { allowOnSandboxPage, frameworkVersions, freePort, listFiles, runToEnd, startServer, stageExample, stopServer, undeclaredImports } from './example-apps';

let registry: LocalRegistry;
beforeAll(async () => {
  registry = await startLocalRegistry();
});
afterAll(() => registry?.close());

/** What a test started, stopped after it, newest first (the app before its providers). */
const running: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const stop of running.splice(0).reverse()) await stop();
});

/** examples/<name>, staged and installed, with its framework versions and imports checked. */
async function stage(name: string): Promise<string> {
  const { dir, manifest } = await stageExample(name, registry);
  for (const dep of frameworkVersions(manifest)) expect(dep).toMatchObject({ satisfied: true });
  expect(undeclaredImports(name, manifest)).toEqual([]);
  return dir;
}

/**
 * A port for the app, and oidc-provider started as its second provider, with the settings the
 * examples read (OIDC_ISSUER and friends).
 */
async function appPortWithOidc(): Promise<{ port: number; appOrigin: string; oidcEnv: NodeJS.ProcessEnv }> {
  const port = await freePort();
  const appOrigin = `http://127.0.0.1:${port}`;
  const redirectUri = `${appOrigin}/authpipe/callback/oidc`;
  const oidc = await startOidcProvider({ redirectUris: [redirectUri] });
  running.push(() => oidc.close());
  const { scopes } = oidc.providerConfig(redirectUri);
  return { port, appOrigin, oidcEnv: { OIDC_ISSUER: oidc.issuer, OIDC_CLIENT_ID: oidc.clientId, OIDC_CLIENT_SECRET: oidc.clientSecret, OIDC_SCOPES: scopes.join(' ') } };
}

/** Starts the app's server process, stopped after the test. */
async function startApp(...args: Parameters<typeof startServer>): Promise<void> {
  const server = await startServer(...args);
  running.push(() => stopServer(server));
}

/**
 * Connects `provider` through the app's routes (as a link, or as the form `form` describes), and
 * sees the app serve its credential.
 * @returns the callback page
 */
async function expectConnectedThroughApp(appOrigin: string, provider: 'attio' | 'oidc', session: string, form?: Record<string, string>): Promise<string> {
  const connection = () => fetch(`${appOrigin}/api/connection?provider=${provider}`).then((r) => r.json());
  expect(await connection()).toEqual({ connected: false });

  const consent = provider === 'attio' ? allowOnSandboxPage : (authorize: URL) => followUntil(authorize.href, appOrigin);
  const { status, html } = await connectWithoutJavaScript(appOrigin, provider, session, consent, form);
  expect(status).toBe(200);
  expect(posted(html)).toMatchObject({ type: 'authpipe:connect', ok: true, connection: { provider, tenantId: 'org_acme', userId: 'user_123', status: 'active' } });

  if (provider === 'attio') {
    expect(await connection()).toEqual({ connected: true, status: 'active', account: { id: expect.any(String), name: 'Acme Sandbox' }, credential: { type: 'oauth2', expiresAt: null } });
  } else {
    // oidc-provider's tokens expire: getCredential served one with its expiry.
    expect(await connection()).toMatchObject({ connected: true, status: 'active', credential: { type: 'oauth2', expiresAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/) } });
  }
  return html;
}

describe('examples/express', () => {
  test('node server.js: the connect flow through the Express handler, with the Attio sandbox and oidc-provider, then getCredential', async () => {
    const dir = await stage('express');
    const { port, appOrigin, oidcEnv } = await appPortWithOidc();
    await startApp(process.execPath, ['server.js'], { cwd: dir, env: { PORT: String(port), ...oidcEnv }, ready: /listening on/ });

    // The page's Connect button is a plain form (no front-end build) with a fresh connect
    // session on each load; submitted as the browser submits it, the flow returns to the page.
    const page = await (await fetch(`${appOrigin}/`)).text();
    expect(page).toContain('<form method="post" action="/authpipe/connect/attio">');
    const fields = Object.fromEntries([...page.matchAll(/<input type="hidden" name="(\w+)" value="([^"]+)">/g)].map((m) => [m[1]!, m[2]!]));
    expect(Object.keys(fields).sort()).toEqual(['mode', 'session']);
    const { session, ...form } = fields;
    const callbackPage = await expectConnectedThroughApp(appOrigin, 'attio', session!, form);
    const back = redirectedTo(callbackPage);
    expect(back.origin + back.pathname).toBe(`${appOrigin}/`);
    expect(back.searchParams.get('authpipe')).toBe('connected');
    expect(await (await fetch(back)).text()).toContain('<p>Connected.</p>');

    const another = /name="session" value="([^"]+)"/.exec(await (await fetch(`${appOrigin}/`)).text())![1]!;
    await expectConnectedThroughApp(appOrigin, 'oidc', another);
  }, 120_000);
});

describe('examples/nextjs', () => {
  test('next build, then next start: the App Router route handler, with the Attio sandbox and oidc-provider, then getCredential', async () => {
    const dir = await stage('nextjs');
    const next = join(ROOT, 'node_modules', 'next', 'dist', 'bin', 'next');
    const build = await runToEnd(process.execPath, [next, 'build'], { cwd: dir, env: { NEXT_TELEMETRY_DISABLED: '1' } });
    if (build.code !== 0) throw new Error(`next build failed:\n${build.output}`);
    expect(build.output).toMatch(/ƒ \/authpipe\/\[\.\.\.path\]/);

    // serverExternalPackages: the addon is required at run time, not bundled (without it,
    // Turbopack fails: a .node file "is not placeable in ESM chunks"); the route's file trace
    // still names the binary, so `output: 'standalone'` and hosts that trace files ship it.
    const built = listFiles(join(dir, '.next', 'server'), new Set()); // everything, node_modules included
    expect(built.filter((file) => file.endsWith('.node'))).toEqual([]);
    const trace = JSON.parse(readFileSync(join(dir, '.next', 'server', 'app', 'authpipe', '[...path]', 'route.js.nft.json'), 'utf8')) as { files: string[] };
    const platform = currentPlatform();
    expect(trace.files).toEqual(expect.arrayContaining([expect.stringContaining(`node_modules/@authpipe/node-${platform}/authpipe.${platform}.node`)]));

    const { port, appOrigin, oidcEnv } = await appPortWithOidc();
    await startApp(process.execPath, [next, 'start', '-H', '127.0.0.1', '-p', String(port)], { cwd: dir, env: { APP_ORIGIN: appOrigin, NEXT_TELEMETRY_DISABLED: '1', ...oidcEnv }, ready: /Ready in/ });

    // The page renders on the server, ConnectButton included.
    const page = await (await fetch(`${appOrigin}/`)).text();
    expect(page).toMatch(/<button[^>]*>Connect Attio<\/button>/);

    const session = async () => ((await (await fetch(`${appOrigin}/api/connect-session`, { method: 'POST' })).json()) as { token: string }).token;
    await expectConnectedThroughApp(appOrigin, 'attio', await session());
    await expectConnectedThroughApp(appOrigin, 'oidc', await session());
  }, 300_000);
});
