#!/usr/bin/env node
// `npm run pack`: the tarballs an app installs, in pack/ at the repository root.
//
//   @authpipe/node             the JS wrapper, its types and the generated loader; the platform
//                              packages as optionalDependencies at the same version
//   @authpipe/node-<platform>  one release binary each (stripped)
//   @authpipe/react            react/'s build
//
// Each package is staged in target/pack/<name>/ with exactly what it ships and a manifest without
// scripts or devDependencies, then packed with `npm pack --ignore-scripts`: packing never runs
// `prepare` (which would rebuild the debug binary) and never touches the debug binary at the root
// that the tests load. The release build goes to its own directory.
//
//   node scripts/pack.mjs                      build this machine's binary, pack all three
//   node scripts/pack.mjs --binaries <dir>     pack prebuilt authpipe.<platform>.node files (CI)
import { execFileSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'pack');
const staging = join(root, 'target', 'pack');
const rootManifest = readJson(join(root, 'package.json'));
const { version } = rootManifest;

/** The manifest keys a published package keeps; scripts, devDependencies and napi stay home. */
const PUBLISHED_KEYS = ['name', 'version', 'description', 'license', 'keywords', 'repository', 'homepage', 'sideEffects', 'main', 'module', 'types', 'exports', 'bin', 'files', 'os', 'cpu', 'libc', 'engines', 'peerDependencies', 'peerDependenciesMeta', 'dependencies', 'optionalDependencies'];

const args = process.argv.slice(2);
const binariesFlag = args.indexOf('--binaries');
const prebuilt = binariesFlag >= 0 ? args[binariesFlag + 1] : undefined;
if (binariesFlag >= 0 && (!prebuilt || !existsSync(prebuilt))) fail('--binaries needs the directory that holds the prebuilt authpipe.<platform>.node files');

rmSync(out, { recursive: true, force: true });
rmSync(staging, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

const binaries = join(staging, 'build');
if (prebuilt) {
  cpSync(prebuilt, binaries, { recursive: true });
} else {
  step('building the release binary (cargo --release: minutes when cold)');
  // --js/--dts: the generated loader and types, from the release build itself (the tests' build,
  // `npm run build:debug` with the `test-hooks` feature, declares test-only calls; this one, without
  // the feature, has none).
  run('npx', ['napi', 'build', '--platform', '--release', '--strip', '--output-dir', binaries, '--js', 'binding.js', '--dts', 'binding.d.ts']);
}

// lib/ compiles against the generated binding types at the root; a checkout installed with
// --ignore-scripts (the release workflow's) has none until the build's are copied there.
for (const file of ['binding.js', 'binding.d.ts']) {
  if (!existsSync(join(root, file)) && existsSync(join(binaries, file))) copyFileSync(join(binaries, file), join(root, file));
}

step('compiling lib/ to dist/ (from clean, so no file of a removed module ships)');
rmSync(join(root, 'dist'), { recursive: true, force: true });
run('npx', ['tsc', '-p', 'lib']);

const platforms = platformPackages();
const nodeBinaries = readdirSync(binaries).filter((file) => file.endsWith('.node'));
if (nodeBinaries.length === 0) fail(`no authpipe.<platform>.node in ${relative(root, binaries)}`);

const packed = [];
for (const file of nodeBinaries) {
  const platform = file.replace(/^authpipe\./, '').replace(/\.node$/, '');
  const dir = platforms.get(platform);
  if (!dir) fail(`${file}: ${platform} is not in napi.targets (npm/ has ${[...platforms.keys()].join(', ')})`);
  const manifest = readJson(join(dir, 'package.json'));
  packed.push(stage(manifest, { [file]: join(binaries, file), 'README.md': join(dir, 'README.md') }));
}

packed.push(
  stage(
    {
      ...rootManifest,
      // The way `napi prepublish` does it, but at pack time only: the repository's own install
      // never asks the registry for platform packages.
      optionalDependencies: Object.fromEntries([...platforms.keys()].map((platform) => [`@authpipe/node-${platform}`, version])),
    },
    {
      dist: join(root, 'dist'),
      'binding.js': existing(join(binaries, 'binding.js'), join(root, 'binding.js')),
      'binding.d.ts': existing(join(binaries, 'binding.d.ts'), join(root, 'binding.d.ts')),
      'README.md': join(root, 'README.md'),
    },
  ),
);

step('building react/');
run('npm', ['run', 'build', '--prefix', 'react']);
const reactManifest = readJson(join(root, 'react', 'package.json'));
if (reactManifest.version !== version) fail(`react/ is at ${reactManifest.version}, @authpipe/node at ${version}: release them together`);
packed.push(stage(reactManifest, { dist: join(root, 'react', 'dist'), 'README.md': join(root, 'react', 'README.md') }));

const rows = packed.map((dir) => {
  const [info] = JSON.parse(run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', out], { cwd: dir, capture: true }));
  const manifest = readJson(join(dir, 'package.json'));
  return { name: info.name, manifest, file: info.filename.replace(/^@/, '').replace(/\//, '-'), tarball: info.size, unpacked: info.unpackedSize, files: info.entryCount };
});
console.log('');
for (const row of rows) {
  console.log(`${row.name.padEnd(32)} ${mb(row.tarball).padStart(9)} packed ${mb(row.unpacked).padStart(9)} unpacked ${String(row.files).padStart(4)} files  pack/${row.file}`);
}
writeFileSync(join(out, 'manifest.json'), JSON.stringify({ version, packages: rows }, null, 2) + '\n');

/** Copies `files` (name in the package -> path here) and LICENSE beside a published manifest. */
function stage(manifest, files) {
  const dir = join(staging, manifest.name.replace('/', '+'));
  mkdirSync(dir, { recursive: true });
  if (manifest.version !== version) fail(`${manifest.name} is at ${manifest.version}, expected ${version}`);
  const published = Object.fromEntries(PUBLISHED_KEYS.filter((key) => key in manifest).map((key) => [key, manifest[key]]));
  writeFileSync(join(dir, 'package.json'), JSON.stringify(published, null, 2) + '\n');
  for (const [name, from] of Object.entries({ ...files, LICENSE: join(root, 'LICENSE') })) {
    if (!existsSync(from)) fail(`${manifest.name}: ${relative(root, from)} is missing (build first?)`);
    if (statSync(from).isDirectory()) cpSync(from, join(dir, name), { recursive: true, filter: (path) => !path.endsWith('.tsbuildinfo') });
    else copyFileSync(from, join(dir, name));
  }
  return dir;
}

function platformPackages() {
  const dirs = new Map();
  for (const entry of readdirSync(join(root, 'npm'))) dirs.set(entry, join(root, 'npm', entry));
  return dirs;
}

function existing(...paths) {
  return paths.find((path) => existsSync(path)) ?? paths[0];
}

function run(command, argv, { cwd = root, capture = false } = {}) {
  const output = execFileSync(command, argv, { cwd, stdio: capture ? ['ignore', 'pipe', 'inherit'] : 'inherit', encoding: 'utf8', shell: process.platform === 'win32' });
  return output;
}

function readJson(path) {
  return JSON.parse(readFileSync(path, 'utf8'));
}

function mb(bytes) {
  return bytes >= 1e6 ? `${(bytes / 1e6).toFixed(2)} MB` : `${(bytes / 1e3).toFixed(1)} kB`;
}

function step(message) {
  console.log(`pack: ${message}`);
}

function fail(message) {
  console.error(`pack: ${message}`);
  process.exit(1);
}
