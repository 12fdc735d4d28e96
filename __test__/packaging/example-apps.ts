/**
 * Runs an app from examples/ as a user would after `npm install`: its files copied to
 * target/example-apps/<name>/, @authpipe/* installed there from the packed tarballs (through the
 * local registry), its framework (Express, Next.js, React) found in this repository's
 * node_modules, at versions that must satisfy the ranges the example declares.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { basename, join } from 'node:path';
import type { Consent } from '../helpers';
import { ROOT, type LocalRegistry } from '../support/local-registry';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const semver = require('semver') as { satisfies(version: string, range: string): boolean };

/** What an example's directory may hold that is not its source: installs and builds. */
const NOT_SOURCE = new Set(['node_modules', '.next']);

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
  cpSync(source, dir, { recursive: true, filter: (path) => !NOT_SOURCE.has(basename(path)) });
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

/**
 * Starts a server process and resolves once its output shows `ready`. Rejects, with the output,
 * if it exits first or is not ready within `timeoutMs` (then it is killed: no process outlives
 * the test).
 */
export function startServer(command: string, args: string[], options: { cwd: string; env: NodeJS.ProcessEnv; ready: RegExp; timeoutMs?: number }): Promise<ChildProcess> {
  const child = spawn(command, args, { cwd: options.cwd, env: { ...process.env, ...options.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  return new Promise((resolve, reject) => {
    const fail = (why: string) => {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`${command} ${args.join(' ')} ${why}:\n${output}`));
    };
    const timer = setTimeout(() => fail('was not ready in time'), options.timeoutMs ?? 60_000);
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      if (options.ready.test(output)) {
        clearTimeout(timer);
        resolve(child);
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code, signal) => fail(`exited (${code ?? signal}) before it was ready`));
  });
}

/** Runs a command to its end, with its output. */
export function runToEnd(command: string, args: string[], options: { cwd: string; env?: NodeJS.ProcessEnv }): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    // npm is npm.cmd on Windows, which only a shell runs.
    const child = spawn(command, args, { cwd: options.cwd, env: { ...process.env, ...options.env }, shell: process.platform === 'win32' });
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

/** The Attio sandbox's consent page, answered by following its Allow link. */
export const allowOnSandboxPage: Consent = async (authorize) => {
  const page = await (await fetch(authorize)).text();
  const allow = /id="allow" href="([^"]+)"/.exec(page)?.[1]?.replace(/&#(\d+);/g, (_, code: string) => String.fromCharCode(Number(code)));
  if (!allow) throw new Error(`no Allow link on the consent page:\n${page}`);
  const decided = await fetch(new URL(allow, authorize), { redirect: 'manual' });
  return decided.headers.get('location') ?? '';
};

/**
 * The bare module specifiers the example's sources import or require that its package.json does
 * not declare: staged inside this repository, such an import would still resolve here, and fail
 * in a user's copy.
 */
export function undeclaredImports(name: string, manifest: ExampleManifest): string[] {
  const source = join(ROOT, 'examples', name);
  const declared = new Set(Object.keys({ ...manifest.dependencies, ...manifest.devDependencies }));
  const files = listFiles(source).filter((file) => /\.(c|m)?(j|t)sx?$/.test(file));
  const specifiers = files.flatMap((file) => [...readFileSync(join(source, file), 'utf8').matchAll(/(?:from\s+|require\(|import\()\s*['"]([^'"]+)['"]/g)].map((m) => m[1]!));
  const packageOf = (specifier: string) => specifier.split('/').slice(0, specifier.startsWith('@') ? 2 : 1).join('/');
  return [...new Set(specifiers.filter((s) => !s.startsWith('.') && !s.startsWith('node:')).map(packageOf))].filter((pkg) => !declared.has(pkg));
}

/** Every file under `dir`, relative, skipping directories named in `skip` (by default installs and builds). */
export function listFiles(dir: string, skip: ReadonlySet<string> = NOT_SOURCE, prefix = ''): string[] {
  return readdirSync(dir).flatMap((entry) => {
    if (skip.has(entry)) return [];
    const path = join(dir, entry);
    return statSync(path).isDirectory() ? listFiles(path, skip, `${prefix}${entry}/`) : [`${prefix}${entry}`];
  });
}
