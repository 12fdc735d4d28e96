/**
 * `npm install @authpipe/node` as an app runs it: the tarballs of `npm run pack`, served by a
 * local registry (nothing else reachable), installed into a fresh project outside this repository
 * with an empty npm cache and no cargo or rustc on PATH. Then the README's quick start runs as
 * CommonJS, as an ES module, and as TypeScript compiled with `--strict` under `node16` and
 * `bundler` resolution, on this Node and on the releases users run.
 */
import { execFile, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { currentPlatform } from '../../lib/platform';
import { ROOT, readPackManifest, startLocalRegistry, type LocalRegistry } from '../support/local-registry';
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { RELEASES, nodeBinary, canRunReleases } = require('../support/node-versions.js') as { RELEASES: string[]; nodeBinary(version: string): string; canRunReleases: boolean };

const execFileAsync = promisify(execFile);
const HOST_PLATFORM_PACKAGE = `@authpipe/node-${currentPlatform()}`;
const TSC = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
/** PATH for the app: node and npm, and the system's tools, but no ~/.cargo/bin. */
const APP_PATH = [dirname(process.execPath), ...(process.platform === 'win32' ? [join(process.env.SystemRoot ?? 'C:\\Windows', 'System32')] : ['/usr/bin', '/bin'])].join(delimiter);

let registry: LocalRegistry;
let app: string;
let installMs: number;

/**
 * The README's quick start: the first ```js block after the marker that names this file, and
 * the output the README says it prints.
 */
function readmeQuickStart(): { code: string; prints: string } {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const marker = readme.indexOf('<!-- quick start: run by __test__/packaging/install.spec.ts -->');
  if (marker < 0) throw new Error('README.md lost its quick-start marker');
  const after = readme.slice(marker);
  const code = /```js\n([\s\S]*?)```/.exec(after)?.[1];
  const prints = /`node quickstart\.mjs` prints `([^`]+)`/.exec(after)?.[1];
  if (!code || !prints) throw new Error('no ```js block, or no "`node quickstart.mjs` prints `...`", after the quick-start marker');
  return { code, prints };
}
const quickStart = readmeQuickStart();

/** The same program as CommonJS: imports become requires, top-level await an async main. */
function asCommonJs(esm: string): string {
  const body = esm.replace(/^import \{ ([^}]+) \} from ('[^']+');$/gm, (_, names: string, from: string) => `const { ${names.trim()} } = require(${from});`);
  if (/^import /m.test(body)) throw new Error('the quick start has an import this conversion does not handle');
  const requires = body.split('\n').filter((line) => line.startsWith('const {') && line.includes('require('));
  const rest = body.split('\n').filter((line) => !requires.includes(line));
  return `${requires.join('\n')}\n(async () => {\n${rest.join('\n')}\n})().catch((err) => { console.error(err); process.exitCode = 1; });\n`;
}

/**
 * Runs a command in the app, as the app's user (its PATH, its npm cache, the local registry).
 * Asynchronous: the registry answers from this process.
 */
async function run(command: string, args: string[], options: { cwd?: string } = {}): Promise<string> {
  try {
    const { stdout } = await execFileAsync(command, args, {
      cwd: options.cwd ?? app,
      env: { PATH: APP_PATH, HOME: app, USERPROFILE: app, npm_config_cache: join(app, '.npm-cache'), npm_config_registry: registry.url, npm_config_update_notifier: 'false' },
      encoding: 'utf8',
      timeout: 120_000,
      // npm is npm.cmd on Windows, which only a shell runs.
      shell: process.platform === 'win32',
    });
    return stdout;
  } catch (err) {
    const { code, signal, stdout, stderr } = err as { code?: number; signal?: string; stdout?: string; stderr?: string };
    throw new Error(`${command} ${args.join(' ')} failed (${code ?? signal}):\n${stdout}\n${stderr}`);
  }
}

beforeAll(async () => {
  registry = await startLocalRegistry();
  app = mkdtempSync(join(tmpdir(), 'authpipe-fresh-app-'));
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'fresh-app', private: true, version: '1.0.0' }, null, 2));
  const started = performance.now();
  await run('npm', ['install', `@authpipe/node@${readPackManifest().version}`, '--no-audit', '--no-fund']);
  installMs = performance.now() - started;
  console.log(`npm install @authpipe/node from the packed tarballs: ${(installMs / 1000).toFixed(1)} s`);
}, 180_000);

afterAll(async () => {
  await registry?.close();
  if (app) rmSync(app, { recursive: true, force: true });
});

test('the app has no Rust toolchain and no way to this repository', () => {
  expect(spawnSync('cargo', ['--version'], { env: { PATH: APP_PATH } }).error).toMatchObject({ code: 'ENOENT' });
  expect(spawnSync('rustc', ['--version'], { env: { PATH: APP_PATH } }).error).toMatchObject({ code: 'ENOENT' });
  expect(app.startsWith(ROOT)).toBe(false);
});

test('npm picks the platform binary from the optionalDependencies, and only it', () => {
  const installed = readdirSync(join(app, 'node_modules', '@authpipe')).sort();
  expect(installed).toEqual(['node', HOST_PLATFORM_PACKAGE.replace('@authpipe/', '')]);
  // It looked the others up (as from the public registry) and skipped them on os/cpu/libc.
  expect(registry.requested).toEqual(expect.arrayContaining(['@authpipe/node-darwin-arm64', '@authpipe/node-win32-x64-msvc', '@authpipe/node-linux-x64-musl', '@authpipe/node-linux-arm64-gnu']));
  const lock = JSON.parse(readFileSync(join(app, 'package-lock.json'), 'utf8')) as { packages: Record<string, { optional?: boolean }> };
  expect(lock.packages[`node_modules/${HOST_PLATFORM_PACKAGE}`]).toMatchObject({ optional: true });
  // No install script: nothing compiles on the user's machine.
  const manifest = JSON.parse(readFileSync(join(app, 'node_modules', '@authpipe', 'node', 'package.json'), 'utf8')) as Record<string, unknown>;
  expect(manifest.scripts).toBeUndefined();
});

describe('the README quick start runs against the sandbox', () => {
  const expectQuickStartOutput = (stdout: string) => expect(stdout).toBe(`${quickStart.prints}\n`);

  test('as CommonJS (require)', async () => {
    writeFileSync(join(app, 'quickstart.cjs'), asCommonJs(quickStart.code));
    expectQuickStartOutput(await run('node', ['quickstart.cjs']));
  });

  test('as an ES module (import)', async () => {
    writeFileSync(join(app, 'quickstart.mjs'), quickStart.code);
    expectQuickStartOutput(await run('node', ['quickstart.mjs']));
  });

  test('import and require share one module: one Authpipe, one AuthpipeError', async () => {
    writeFileSync(
      join(app, 'same-module.mjs'),
      [
        "import { createRequire } from 'node:module';",
        "import * as esm from '@authpipe/node';",
        "import * as esmTesting from '@authpipe/node/testing';",
        'const require = createRequire(import.meta.url);',
        "const cjs = require('@authpipe/node');",
        "const same = esm.Authpipe === cjs.Authpipe && esm.AuthpipeError === cjs.AuthpipeError && esmTesting.createSandbox === require('@authpipe/node/testing').createSandbox;",
        "const names = Object.keys(cjs).filter((name) => name !== '__esModule').sort();",
        'console.log(JSON.stringify({ same, missing: names.filter((name) => !(name in esm)) }));',
      ].join('\n'),
    );
    expect(JSON.parse(await run('node', ['same-module.mjs']))).toEqual({ same: true, missing: [] });
  });

  test.each(['node16', 'bundler'] as const)('as TypeScript, tsc --strict with moduleResolution %s', async (resolution) => {
    const dir = join(app, `ts-${resolution}`);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'quickstart.mts'), quickStart.code);
    writeFileSync(
      join(dir, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          strict: true,
          target: 'ES2022',
          module: resolution === 'node16' ? 'node16' : 'esnext',
          moduleResolution: resolution,
          // The compiler and Node's types come from this repository; the package under test does not.
          typeRoots: [join(ROOT, 'node_modules', '@types')],
          types: ['node'],
          outDir: 'out',
          skipLibCheck: false,
        },
        files: ['quickstart.mts'],
      }),
    );
    await run('node', [TSC, '-p', 'tsconfig.json'], { cwd: dir });
    expectQuickStartOutput(await run('node', [join(dir, 'out', 'quickstart.mjs')]));
  });

  // The fetched releases run on linux-x64 with glibc; elsewhere the release workflow's Node matrix covers them.
  (canRunReleases ? test.each(RELEASES) : test.skip.each(RELEASES))('on Node %s, as CommonJS and as an ES module', async (release) => {
    const node = nodeBinary(release);
    expectQuickStartOutput(await run(node, ['quickstart.cjs']));
    expectQuickStartOutput(await run(node, ['quickstart.mjs']));
  });
});

/** Loads @authpipe/node in the app after `setup` (JS run first), and reports how it failed. */
async function loadFailure(setup = ''): Promise<{ code: string; message: string }> {
  writeFileSync(join(app, 'load.cjs'), `${setup}\ntry { require('@authpipe/node'); console.log('{}'); } catch (err) { console.log(JSON.stringify({ code: err.code, message: err.message })); }`);
  return JSON.parse(await run('node', ['load.cjs'])) as { code: string; message: string };
}

describe('when the binary cannot load, one error says why', () => {
  const platformDir = () => join(app, 'node_modules', HOST_PLATFORM_PACKAGE);
  const binaryName = `authpipe.${currentPlatform()}.node`;

  test('its platform package is missing (--omit=optional): UNSUPPORTED_PLATFORM names the package to install', async () => {
    const aside = `${platformDir()}.aside`;
    renameSync(platformDir(), aside);
    try {
      const { code, message } = await loadFailure();
      expect(code).toBe('UNSUPPORTED_PLATFORM');
      expect(message).toContain(currentPlatform());
      expect(message).toContain(`npm install ${HOST_PLATFORM_PACKAGE}`);
      expect(message).not.toMatch(/Cannot find module|npm has a bug/);
      // The testing entry needs no binary: an app's tests can start a sandbox anywhere.
      writeFileSync(join(app, 'sandbox-only.cjs'), "require('@authpipe/node/testing').createSandbox({ provider: 'attio' }).then((s) => s.close()).then(() => console.log('ok'));");
      expect(await run('node', ['sandbox-only.cjs'])).toBe('ok\n');
    } finally {
      renameSync(aside, platformDir());
    }
  });

  test('no binary is built for the platform: UNSUPPORTED_PLATFORM lists the platforms there are', async () => {
    const { code, message } = await loadFailure("Object.defineProperty(process, 'arch', { value: 'riscv64' });");
    expect(code).toBe('UNSUPPORTED_PLATFORM');
    expect(message).toMatch(/no binary for \S+-riscv64/);
    expect(message).toContain('linux-x64-gnu, linux-arm64-gnu');
    expect(message).toContain('NAPI_RS_NATIVE_LIBRARY_PATH');
  });

  test('there, a binary built from source loads through NAPI_RS_NATIVE_LIBRARY_PATH', async () => {
    const built = join(platformDir(), binaryName); // stands in for one built on that platform
    const setup = `process.env.NAPI_RS_NATIVE_LIBRARY_PATH = ${JSON.stringify(built)}; Object.defineProperty(process, 'arch', { value: 'riscv64' });`;
    expect(await loadFailure(setup)).toEqual({});
  });

  test('the binary is damaged: NATIVE_LOAD_FAILED with the reason the system gave', async () => {
    const binary = join(platformDir(), binaryName);
    renameSync(binary, `${binary}.aside`);
    writeFileSync(binary, 'not a shared library');
    try {
      const { code, message } = await loadFailure();
      expect(code).toBe('NATIVE_LOAD_FAILED');
      expect(message).toContain(HOST_PLATFORM_PACKAGE);
      // glibc, musl, macOS and Windows say it their own way.
      expect(message).toMatch(/invalid ELF header|exec format error|file too short|not a mach-o file|slice is not valid mach-o|not a valid Win32 application/i);
    } finally {
      renameSync(`${binary}.aside`, binary);
    }
    expect(await loadFailure()).toEqual({});
  });
});
