/**
 * The apps in examples/, installed from the packed tarballs and run as their READMEs say: the
 * Express app with `node server.js`, the Next.js app with `next build` then `next start` (the
 * addon kept out of the bundle by `serverExternalPackages`). Each goes through the connect flow
 * with the Attio sandbox to a credential served by `getCredential`, so neither can rot.
 */
import type { ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { currentPlatform } from '../../lib/platform';
import { ROOT, startLocalRegistry, type LocalRegistry } from '../support/local-registry';
import { connectWithoutJavaScript, frameworkVersions, freePort, runToEnd, startServer, stageExample, stopServer } from './example-apps';

let registry: LocalRegistry;
beforeAll(async () => {
  registry = await startLocalRegistry();
});
afterAll(() => registry?.close());

/** Every file under `dir`, relative. */
function filesUnder(dir: string, prefix = ''): string[] {
  return readdirSync(dir).flatMap((entry) => {
    const path = join(dir, entry);
    return statSync(path).isDirectory() ? filesUnder(path, `${prefix}${entry}/`) : [`${prefix}${entry}`];
  });
}

async function expectConnectedThroughApp(appOrigin: string, session: string) {
  const before = await (await fetch(`${appOrigin}/api/connection`)).json();
  expect(before).toEqual({ connected: false });

  const { status, result } = await connectWithoutJavaScript(appOrigin, session);
  expect(status).toBe(200);
  expect(result).toMatchObject({ type: 'authpipe:connect', ok: true, connection: { provider: 'attio', tenantId: 'org_acme', userId: 'user_123', status: 'active' } });

  const after = await (await fetch(`${appOrigin}/api/connection`)).json();
  expect(after).toEqual({ connected: true, status: 'active', account: { id: expect.any(String), name: 'Acme Sandbox' }, credential: { type: 'oauth2', expiresAt: null } });
}

describe('examples/express', () => {
  let server: ChildProcess | undefined;
  afterAll(() => stopServer(server));

  test('node server.js: the connect flow through the Express handler, then getCredential', async () => {
    const { dir, manifest } = await stageExample('express', registry);
    for (const dep of frameworkVersions(manifest)) expect(dep).toMatchObject({ satisfied: true });
    const port = await freePort();
    server = await startServer(process.execPath, ['server.js'], { cwd: dir, env: { PORT: String(port) }, ready: /listening on/ });
    const appOrigin = `http://127.0.0.1:${port}`;

    // The page carries a connect session in a plain form (no front-end build).
    const page = await (await fetch(`${appOrigin}/`)).text();
    expect(page).toContain('<form method="post" action="/authpipe/connect/attio">');
    const session = /name="session" value="([^"]+)"/.exec(page)![1]!;
    await expectConnectedThroughApp(appOrigin, session);
  });
});

describe('examples/nextjs', () => {
  let server: ChildProcess | undefined;
  afterAll(() => stopServer(server));

  test('next build, then next start: the App Router route handler, then getCredential', async () => {
    const { dir, manifest } = await stageExample('nextjs', registry);
    for (const dep of frameworkVersions(manifest)) expect(dep).toMatchObject({ satisfied: true });
    const next = join(ROOT, 'node_modules', 'next', 'dist', 'bin', 'next');
    const build = await runToEnd(process.execPath, [next, 'build'], { cwd: dir, env: { NEXT_TELEMETRY_DISABLED: '1' } });
    if (build.code !== 0) throw new Error(`next build failed:\n${build.output}`);
    expect(build.output).toMatch(/ƒ \/authpipe\/\[\.\.\.path\]/);

    // serverExternalPackages: the addon is required at run time, not bundled (without it,
    // Turbopack fails: a .node file "is not placeable in ESM chunks"); the route's file trace
    // still names the binary, so `output: 'standalone'` and hosts that trace files ship it.
    const built = filesUnder(join(dir, '.next', 'server'));
    expect(built.filter((file) => file.endsWith('.node'))).toEqual([]);
    const trace = JSON.parse(readFileSync(join(dir, '.next', 'server', 'app', 'authpipe', '[...path]', 'route.js.nft.json'), 'utf8')) as { files: string[] };
    const platform = currentPlatform();
    expect(trace.files).toEqual(expect.arrayContaining([expect.stringContaining(`node_modules/@authpipe/node-${platform}/authpipe.${platform}.node`)]));

    const port = await freePort();
    const appOrigin = `http://127.0.0.1:${port}`;
    server = await startServer(process.execPath, [next, 'start', '-H', '127.0.0.1', '-p', String(port)], { cwd: dir, env: { APP_ORIGIN: appOrigin, NEXT_TELEMETRY_DISABLED: '1' }, ready: /Ready in/ });

    // The page renders on the server, ConnectButton included.
    const page = await (await fetch(`${appOrigin}/`)).text();
    expect(page).toMatch(/<button[^>]*>Connect Attio<\/button>/);

    const { token } = (await (await fetch(`${appOrigin}/api/connect-session`, { method: 'POST' })).json()) as { token: string };
    await expectConnectedThroughApp(appOrigin, token);
  }, 300_000);
});
