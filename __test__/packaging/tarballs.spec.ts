/**
 * What `npm run pack` wrote holds only what an app needs: built JS, types, README, LICENSE, the
 * loader and the release binary. No test, source, source map, key, database or env file; a
 * release binary (stripped, without the test build's test-only calls); manifests without scripts.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PACK_DIR, ROOT, readPackManifest } from '../support/local-registry';
import { SUPPORTED_PLATFORMS, currentPlatform } from '../../lib/platform';

const { version, packages } = readPackManifest();
const HOST_PLATFORM = currentPlatform();

/** What a package may hold, by path inside the tarball (under `package/`). */
function allowedIn(name: string): RegExp {
  if (name === '@authpipe/node') return /^(package\.json|README\.md|LICENSE|binding\.js|binding\.d\.ts|dist\/([\w-]+\/)*[\w-]+\.(js|mjs|d\.ts|d\.mts))$/;
  if (name === '@authpipe/react') return /^(package\.json|README\.md|LICENSE|dist\/(esm|cjs)\/([\w-]+\/)*[\w-]+\.(js|d\.ts)|dist\/(esm|cjs)\/package\.json)$/;
  const platform = /^@authpipe\/node-([\w-]+)$/.exec(name)?.[1];
  if (!platform || !(SUPPORTED_PLATFORMS as readonly string[]).includes(platform)) throw new Error(`pack/ holds an unexpected package ${name}`);
  return new RegExp(`^(package\\.json|README\\.md|LICENSE|authpipe\\.${platform}\\.node)$`);
}
const FORBIDDEN = /(^|\/)(__test__|test|tests|src|crates|examples)\/|\.(spec|test)\.|\.map$|\.key$|\.pem$|\.db(-wal|-shm)?$|\.sqlite|(^|\/)\.env|\.tsbuildinfo$|\.rs$/;

/** napi-rs's platform name for a Rust target triple (`aarch64-unknown-linux-musl` -> `linux-arm64-musl`). */
function platformOfTarget(triple: string): string {
  const [cpu, , os, abi] = triple.split('-') as [string, string, string, string | undefined];
  const arch = { x86_64: 'x64', aarch64: 'arm64' }[cpu] ?? cpu;
  if (os === 'linux') return `linux-${arch}-${abi}`;
  if (os === 'darwin') return `darwin-${arch}`;
  if (os === 'windows') return `win32-${arch}-${abi}`;
  throw new Error(`no platform name for ${triple}`);
}

const unpacked = mkdtempSync(join(tmpdir(), 'authpipe-tarballs-'));
afterAll(() => rmSync(unpacked, { recursive: true, force: true }));

function contents(file: string): { dir: string; entries: string[] } {
  const dir = join(unpacked, file);
  execFileSync('mkdir', ['-p', dir]);
  execFileSync('tar', ['-xzf', join(PACK_DIR, file), '-C', dir]);
  const entries = execFileSync('tar', ['-tzf', join(PACK_DIR, file)], { encoding: 'utf8' }).trim().split('\n');
  return { dir: join(dir, 'package'), entries: entries.map((entry) => entry.replace(/^package\//, '')) };
}

test('pack/ has @authpipe/node, @authpipe/react and this platform\'s binary, at the repository version', () => {
  expect(packages.map((p) => p.name)).toEqual(expect.arrayContaining(['@authpipe/node', `@authpipe/node-${HOST_PLATFORM}`, '@authpipe/react']));
  expect(version).toBe(JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version);
  console.log(packages.map((p) => `${p.name}: ${(p.tarball / 1e6).toFixed(2)} MB packed, ${(p.unpacked / 1e6).toFixed(2)} MB unpacked, ${p.files} files`).join('\n'));
});

describe.each(packages.map((p) => [p.name, p] as const))('%s', (name, pkg) => {
  const { dir, entries } = contents(pkg.file);

  test('holds only what an app needs', () => {
    const allowed = allowedIn(name);
    expect(entries.filter((entry) => !allowed.test(entry))).toEqual([]);
    expect(entries.filter((entry) => FORBIDDEN.test(entry))).toEqual([]);
    expect(entries).toEqual(expect.arrayContaining(['package.json', 'README.md', 'LICENSE']));
  });

  test('its manifest has no scripts, devDependencies or build configuration', () => {
    const manifest = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as Record<string, unknown>;
    for (const key of ['scripts', 'devDependencies', 'napi', 'private']) expect(manifest[key]).toBeUndefined();
    expect(manifest).toMatchObject({ version, license: 'Apache-2.0' });
  });

  test('no text file in it carries a private key', () => {
    const texts = entries.filter((entry) => !entry.endsWith('.node'));
    const keys = texts.filter((entry) => /-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(readFileSync(join(dir, entry), 'utf8')));
    expect(keys).toEqual([]);
  });
});

test('@authpipe/node lists a platform package for each napi target, at its own version', () => {
  const node = packages.find((p) => p.name === '@authpipe/node')!;
  const napiTargets = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { napi: { targets: string[] } }).napi.targets;
  expect(napiTargets.map(platformOfTarget).sort()).toEqual([...SUPPORTED_PLATFORMS].sort());
  expect(readdirSync(join(ROOT, 'npm')).sort()).toEqual([...SUPPORTED_PLATFORMS].sort());
  expect(node.manifest.optionalDependencies).toEqual(Object.fromEntries(SUPPORTED_PLATFORMS.map((platform) => [`@authpipe/node-${platform}`, version])));
  expect(node.manifest.dependencies).toBeUndefined();
  // Both module systems, with types for each.
  expect(node.manifest.exports).toMatchObject({
    '.': { import: { types: './dist/index.d.mts', default: './dist/index.mjs' }, require: { types: './dist/index.d.ts', default: './dist/index.js' } },
  });
  // The command line ships with it (`npx authpipe`).
  expect(node.manifest.bin).toEqual({ authpipe: 'dist/cli/main.js' });
});

test('the binary is the release build: stripped, without the test-only calls', () => {
  const pkg = packages.find((p) => p.name === `@authpipe/node-${HOST_PLATFORM}`)!;
  const { dir } = contents(pkg.file);
  const binary = join(dir, `authpipe.${HOST_PLATFORM}.node`);
  // The release build has no test-only calls (the `test-hooks` feature is off), nor their names.
  expect(statSync(binary).size).toBeLessThan(20e6); // the debug build is about 160 MB
  if (process.platform === 'linux') {
    const sections = execFileSync('readelf', ['-S', '-W', binary], { encoding: 'utf8' });
    expect(sections).not.toMatch(/\.symtab|\.debug_info/);
  }
  const bytes = readFileSync(binary);
  expect(bytes.includes('testOnlyPanic')).toBe(false); // the name a test-hooks build registers with napi
  expect(bytes.length).toBeGreaterThan(1e6);

  const node = packages.find((p) => p.name === '@authpipe/node')!;
  const types = readFileSync(join(contents(node.file).dir, 'binding.d.ts'), 'utf8');
  expect(types).toContain('export declare class NativeAuthpipe');
  expect(types).not.toContain('testOnlyPanic');
});
