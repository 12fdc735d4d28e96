// The planted-secret scan: every secret the scenarios plant (access and refresh tokens, codes,
// client secrets, API keys, webhook secrets, master keys) and every one-use value the library
// makes (state, connect session token, browser binding, PKCE verifier) is looked for, in every
// spelling a leak could take, in everything the library let out: each value a method returned or
// rejected with (util.inspect with hidden fields, and JSON), thrown errors with stack and causes,
// events, the handler's pages and headers, the metrics text, the log file a real pino logger
// (level trace) wrote throughout, the child process's stdout and stderr, and the store
// as bytes (every file of the SQLite store's directory, WAL and shared memory included; on
// PostgreSQL a pg_dump of the test schema and the raw data files of its tables). The only place
// a planted value may come out is what getCredential and getSecret return.
//
// The scenarios are the SCENARIOS list in support/secret-scan-child.js: one entry per path.
import { execFileSync, spawn } from 'node:child_process';
import { accessSync, constants, existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { POSTGRES_URL, postgresStore, psql, STORE_KIND, tempDir } from './helpers';
import { Authpipe } from '..';
import { needlesFor, Scanner, STRING_SPELLINGS, type Generated, type Hit, type Planted } from './support/planted';

interface Results {
  scenarios: string[];
  /** The Authpipe methods the scenarios called. */
  called: string[];
  events: number;
  received: number;
  planted: Planted[];
  generated: Generated[];
  outputs: Array<{ where: string; text: string; allows: string[] }>;
}

const dir = tempDir();
const storeDir = join(dir, 'store');
const snapshotDir = join(dir, 'snapshots');
const store = STORE_KIND === 'sqlite' ? join(storeDir, 'authpipe.db') : postgresStore();
const logFile = join(dir, 'authpipe.log');

function runChild(): Promise<{ code: number | null; stdout: Buffer; stderr: Buffer }> {
  const configFile = join(dir, 'config.json');
  const snapshots = STORE_KIND === 'sqlite' ? snapshotDir : undefined;
  writeFileSync(configFile, JSON.stringify({ store, results: join(dir, 'results.json'), log: logFile, snapshots }));
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(__dirname, 'support', 'secret-scan-child.js'), configFile], {
      env: { ...process.env, NODE_ENV: 'test' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => stdout.push(c));
    child.stderr.on('data', (c: Buffer) => stderr.push(c));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout: Buffer.concat(stdout), stderr: Buffer.concat(stderr) }));
  });
}

/** Every file under `root`, as bytes, named `<label> <path under root>`. */
function filesUnder(root: string, label: string, prefix = ''): Array<{ where: string; bytes: Buffer }> {
  return readdirSync(root).flatMap((name) => {
    const path = join(root, name);
    return statSync(path).isDirectory() ? filesUnder(path, label, `${prefix}${name}/`) : [{ where: `${label} ${prefix}${name}`, bytes: readFileSync(path) }];
  });
}

/** The PostgreSQL side: a dump of the schema, and its tables' data files (after a checkpoint) as bytes. */
function postgresBytes(): Array<{ where: string; bytes: Buffer }> {
  const schema = new URL(store).searchParams.get('schema')!;
  const dump = spawnText('pg_dump', ['--no-owner', '-n', schema, '-d', POSTGRES_URL]);
  psql('CHECKPOINT');
  const dataDir = psql('SHOW data_directory');
  try {
    accessSync(dataDir, constants.R_OK);
  } catch {
    // A server elsewhere (AUTHPIPE_TEST_POSTGRES), or data files this user may not read.
    process.stderr.write(`secret scan: SKIPPED PostgreSQL's data files (${dataDir} is not readable here); the dump is scanned\n`);
    return [{ where: `pg_dump -n ${schema}`, bytes: dump }];
  }
  const files = psql(
    `SELECT c.relname || ' ' || pg_relation_filepath(c.oid) FROM pg_class c WHERE c.relnamespace = '${schema}'::regnamespace AND pg_relation_filepath(c.oid) IS NOT NULL
     UNION ALL SELECT t.relname || ' ' || pg_relation_filepath(t.oid) FROM pg_class c JOIN pg_class t ON t.oid = c.reltoastrelid WHERE c.relnamespace = '${schema}'::regnamespace`,
  )
    .split('\n')
    .filter(Boolean)
    .flatMap((line) => {
      const [relation, path] = line.split(' ') as [string, string];
      const full = join(dataDir, path);
      return existsSync(full) ? [{ where: `PostgreSQL data file of ${relation}`, bytes: readFileSync(full) }] : [];
    });
  return [{ where: `pg_dump -n ${schema}`, bytes: dump }, ...files];
}

function spawnText(command: string, args: string[]): Buffer {
  return execFileSync(command, args, { maxBuffer: 256 * 1024 * 1024 });
}

test('the scanner finds a planted value in every spelling it looks for', () => {
  const planted: Planted = { kind: 'refresh_token', value: 'PLANTED-refresh_token-ABCDEFGHijklmnop12345678+/"\\é', core: 'ABCDEFGHijklmnop12345678' };
  const scanner = new Scanner(needlesFor([planted], [{ kind: 'state', value: 'state-value-zyxwvuts' }]));
  for (const [spelling, encode] of Object.entries(STRING_SPELLINGS)) {
    const hits = scanner.scan(spelling, Buffer.concat([Buffer.from('before '), encode(planted.value), Buffer.from(' after')]));
    // (A spelling that equals another, e.g. form- and percent-encoding here, is looked for once.)
    expect(hits.some((h) => h.what.startsWith('refresh_token #0 as '))).toBe(true);
  }
  expect(scanner.scan('cut short', Buffer.from('token PLANTED-refresh_token-ABCDEFGH... expired'))).toHaveLength(1);
  expect(scanner.scan('allowed', Buffer.from('state-value-zyxwvuts'), ['state'])).toEqual([]);
  expect(scanner.scan('not allowed', Buffer.from('state-value-zyxwvuts'))).toHaveLength(1);
});

test('no planted secret is anywhere the library let it out, but in getCredential and getSecret', async () => {
  const run = await runChild();
  if (run.code !== 0) throw new Error(`the scenarios failed (exit ${run.code}): ${run.stderr.toString().slice(0, 2000)}`);
  const results = JSON.parse(readFileSync(join(dir, 'results.json'), 'utf8')) as Results;

  const haystacks: Array<{ where: string; bytes: Buffer; allows?: string[] }> = [
    ...results.outputs.map((o) => ({ where: o.where, bytes: Buffer.from(o.text, 'utf8'), allows: o.allows })),
    { where: 'the pino log file', bytes: readFileSync(logFile) },
    { where: 'stdout', bytes: run.stdout },
    { where: 'stderr', bytes: run.stderr },
    ...(STORE_KIND === 'sqlite' ? [...filesUnder(snapshotDir, 'store file after scenario'), ...filesUnder(storeDir, 'store file at the end:')] : postgresBytes()),
  ];
  const needles = needlesFor(results.planted, results.generated);
  const scanner = new Scanner(needles);
  const hits: Hit[] = haystacks.flatMap((h) => scanner.scan(h.where, h.bytes, h.allows));

  // The scan read what it claims to: the store holds the (plaintext) tenant ids, each kind of
  // value was planted, the provider was sent them, the library made its one-use values.
  const storeBytes = haystacks.filter((h) => h.where.startsWith('store file') || h.where.startsWith('pg_dump') || h.where.startsWith('PostgreSQL'));
  expect(storeBytes.some((h) => h.bytes.includes('org_scan'))).toBe(true);
  const dataFiles = storeBytes.filter((h) => h.where.startsWith('PostgreSQL data file'));
  if (dataFiles.length > 0) expect(dataFiles.some((h) => h.bytes.includes('org_scan'))).toBe(true);
  if (STORE_KIND === 'sqlite') {
    const names = storeBytes.map((h) => h.where);
    expect(names).toEqual(expect.arrayContaining(['store file after scenario 1/authpipe.db-wal', 'store file after scenario 1/authpipe.db-shm', 'store file at the end: authpipe.db']));
  }
  // Every public method is driven: one that lands without a scenario fails here.
  const methods = Object.getOwnPropertyNames(Authpipe.prototype).filter((name) => name !== 'constructor');
  expect(methods.filter((name) => !results.called.includes(name))).toEqual([]);
  const kinds = new Set(results.planted.map((p) => p.kind));
  for (const kind of ['access_token', 'refresh_token', 'code', 'client_secret', 'api_key', 'webhook_secret', 'secret_value', 'master_key']) expect(kinds).toContain(kind);
  expect(new Set(results.generated.map((g) => g.kind))).toEqual(new Set(['state', 'session', 'binding', 'pkce_verifier']));
  expect(results.events).toBeGreaterThan(10);
  // The log holds the records of the failures the scenarios caused, with their codes.
  const logged = readFileSync(logFile, 'utf8').trim().split('\n').map((line) => JSON.parse(line) as { event: string; code?: string });
  for (const event of ['refresh.succeeded', 'refresh.failed', 'probe.failed', 'connection.revoked', 'tenant_key.rotated', 'master_key.rotated']) expect(logged.map((r) => r.event)).toContain(event);
  expect(logged.some((r) => r.event === 'refresh.failed' && r.code === 'invalid_grant')).toBe(true);
  expect(results.received).toBeGreaterThan(50);

  const bytes = haystacks.reduce((sum, h) => sum + h.bytes.length, 0);
  process.stdout.write(
    `secret scan (${STORE_KIND}): ${results.scenarios.length} scenarios, ${haystacks.length} outputs (${results.outputs.length} recorded, stdout, stderr, ` +
      `${storeBytes.length} store files or dumps), ${bytes.toLocaleString('en')} bytes; ${results.planted.length} planted and ${results.generated.length} generated values, ` +
      `${needles.length} needles (${Object.keys(STRING_SPELLINGS).length} spellings each, fragments, key bytes); ${results.events} events, ${logged.length} log records; ${hits.length} hits\n`,
  );
  expect(summarise(hits)).toEqual([]);
}, 180_000);

/** Hits, one line per output and value (a value's fragments count as one hit). */
function summarise(hits: readonly Hit[]): string[] {
  const first = new Map<string, number>();
  for (const hit of hits) {
    const key = `${hit.where}: ${hit.what.replace(/, (characters|bytes) \d+-\d+.*$/, ', a fragment')}`;
    if (!first.has(key)) first.set(key, hit.offset);
  }
  return [...first].map(([key, offset]) => `${key} (first at ${offset})`);
}
