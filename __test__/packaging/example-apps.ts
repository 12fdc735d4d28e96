/**
 * Runs an app from examples/ as a user would after `npm install`: its files copied to
 * target/example-apps/<name>/, @authpipe/* installed there from the packed tarballs (through the
 * local registry), its framework (Express, Next.js, React) found in this repository's
 * node_modules, at versions that must satisfy the ranges the example declares.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { cpSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { ROOT, type LocalRegistry } from '../support/local-registry';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const semver = require('semver') as { satisfies(version: string, range: string): boolean };

interface ExampleManifest {
  dependencies: Record<string, string>;
  devDependencies?: Record<string, string>;
}

/** Stages examples/<name> and installs its @authpipe/* dependencies from the tarballs. */
export async function stageExample(name: string, registry: LocalRegistry): Promise<{ dir: string; manifest: ExampleManifest }> {
  const source = join(ROOT, 'examples', name);
  const dir = join(ROOT, 'target', 'example-apps', name);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  cpSync(source, dir, { recursive: true, filter: (path) => !/[/\\](node_modules|\.next)$/.test(path) });
  const manifest = JSON.parse(readFileSync(join(source, 'package.json'), 'utf8')) as ExampleManifest;
  const ours = Object.fromEntries(Object.entries(manifest.dependencies).filter(([dep]) => dep.startsWith('@authpipe/')));
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ ...manifest, dependencies: ours, devDependencies: {} }, null, 2));
  // Not spawnSync: the registry answers from this process.
  const install = await runToEnd('npm', ['install', '--no-package-lock', '--legacy-peer-deps', '--no-audit', '--no-fund'], {
    cwd: dir,
    env: { npm_config_registry: registry.url, npm_config_cache: join(dir, '.npm-cache'), npm_config_update_notifier: 'false' },
  });
  if (install.code !== 0) throw new Error(`npm install in ${dir} failed:\n${install.output}`);
  return { dir, manifest };
}

/** The example's other dependencies, with the version this repository provides, if it satisfies the range. */
export function frameworkVersions(manifest: ExampleManifest): Array<{ name: string; range: string; installed: string; satisfied: boolean }> {
  return Object.entries({ ...manifest.dependencies, ...manifest.devDependencies })
    .filter(([dep]) => !dep.startsWith('@authpipe/'))
    .map(([dep, range]) => {
      const installed = (JSON.parse(readFileSync(join(ROOT, 'node_modules', dep, 'package.json'), 'utf8')) as { version: string }).version;
      return { name: dep, range, installed, satisfied: semver.satisfies(installed, range) };
    });
}

/** A port free on 127.0.0.1 now (the app binds it next). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

/** Starts a server process and resolves once its output shows `ready`; rejects if it exits first. */
export function startServer(command: string, args: string[], options: { cwd: string; env: NodeJS.ProcessEnv; ready: RegExp }): Promise<ChildProcess> {
  const child = spawn(command, args, { cwd: options.cwd, env: { ...process.env, ...options.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  return new Promise((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      if (options.ready.test(output)) resolve(child);
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code, signal) => reject(new Error(`${command} ${args.join(' ')} exited (${code ?? signal}) before it was ready:\n${output}`)));
  });
}

/** Runs a command to its end, with its output. */
export function runToEnd(command: string, args: string[], options: { cwd: string; env?: NodeJS.ProcessEnv }): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { cwd: options.cwd, env: { ...process.env, ...options.env } });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.on('exit', (code) => resolve({ code, output }));
  });
}

export async function stopServer(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  await exited;
}

/** How the user consents at the provider: from its authorize URL to the app's callback URL. */
export type Consent = (authorizeUrl: URL) => Promise<string>;

/** The Attio sandbox's consent page, answered by following its Allow link. */
export const allowOnSandboxPage: Consent = async (authorize) => {
  const page = await (await fetch(authorize)).text();
  const allow = /id="allow" href="([^"]+)"/.exec(page)?.[1]?.replace(/&#(\d+);/g, (_, code: string) => String.fromCharCode(Number(code)));
  if (!allow) throw new Error(`no Allow link on the consent page:\n${page}`);
  const decided = await fetch(new URL(allow, authorize), { redirect: 'manual' });
  return decided.headers.get('location') ?? '';
};

/**
 * A browser without JavaScript through the connect flow: the app's connect route, the
 * provider's consent, then the callback page.
 * @returns the result the callback page hands to the opener window or the `returnTo` redirect
 */
export async function connectWithoutJavaScript(appOrigin: string, provider: string, session: string, consent: Consent): Promise<{ status: number; result: Record<string, unknown> }> {
  const start = await fetch(`${appOrigin}/authpipe/connect/${provider}?session=${encodeURIComponent(session)}`, { redirect: 'manual' });
  if (start.status !== 302) throw new Error(`connect answered ${start.status}: ${await start.text()}`);
  const cookies = start.headers.getSetCookie().map((cookie) => cookie.split(';')[0]).join('; ');
  const callback = await consent(new URL(start.headers.get('location')!));
  if (!callback.startsWith(`${appOrigin}/authpipe/callback`)) throw new Error(`consent sent the browser to ${callback}`);
  const page = await fetch(callback, { headers: { cookie: cookies }, redirect: 'manual' });
  const html = await page.text();
  const result = /var result = (\{.*?\});\n/s.exec(html)?.[1];
  if (!result) throw new Error(`the callback answered ${page.status} without a result:\n${html}`);
  return { status: page.status, result: JSON.parse(result) as Record<string, unknown> };
}
