// The `authpipe` command line, run as a real child process against an SQLite store and a
// PostgreSQL store in the same run: every command with and without --json, its exit codes, and
// bad input (a wrong key, a missing store, a malformed JSONL line) refused with exit 2 and the
// reason, never a secret or a stack trace.
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Authpipe, type Connection, type ImportConnectionInput } from '../..';
import { newKey, POSTGRES_URL, psql } from '../helpers';
import { authpipe, CLI, json, seededStore, STORE_KINDS, workDir, type Run, type StoreKind } from './cli';

const dir = workDir();
const SECRET = `planted-secret-${newKey()}`;
const CONNECTIONS: ImportConnectionInput[] = [
  { provider: 'attio', tenantId: 'org_acme', userId: 'u1', accessToken: SECRET, scopes: ['record_permission:read'] },
  { provider: 'attio', tenantId: 'org_acme', userId: 'u2', accessToken: `${SECRET}-2` },
  { provider: 'close', tenantId: 'org_acme', userId: 'u3', apiKey: `${SECRET}-api` },
  { provider: 'hubspot', tenantId: 'org_beta', userId: 'u4', accessToken: `${SECRET}-4`, refreshToken: `${SECRET}-r`, expiresAt: Date.now() + 3_600_000 },
];

/** Asserts the run exited with `code` and, on failure, said `authpipe: <errorCode>:` without a stack. */
function expectExit(run: Run, code: number, errorCode?: string): void {
  if (run.code !== code) throw new Error(`expected exit ${code}, got ${run.code}\nstdout:\n${run.stdout}\nstderr:\n${run.stderr}`);
  if (errorCode) expect(run.stderr).toMatch(new RegExp(`^authpipe: ${errorCode}: `, 'm'));
  expect(run.stderr).not.toMatch(/^\s+at /m); // no stack trace without --debug
  for (const out of [run.stdout, run.stderr]) expect(out).not.toContain(SECRET);
}

describe('every command has --help; usage errors exit 2', () => {
  const commands = ['status', 'list', 'show', 'check', 'refresh', 'rotate-key', 'retire-key', 'delete-tenant', 'import', 'doctor'];

  test('authpipe --help lists every command and the exit codes', async () => {
    const run = await authpipe(['--help']);
    expectExit(run, 0);
    for (const command of commands) expect(run.stdout).toMatch(new RegExp(`^  ${command} `, 'm'));
    expect(run.stdout).toContain('2  could not run');
  });

  test.each(commands)('authpipe %s --help', async (command) => {
    const run = await authpipe([command, '--help']);
    expectExit(run, 0);
    expect(run.stdout).toMatch(new RegExp(`^Usage: authpipe ${command}`));
    expect(run.stdout).toContain('Exit codes:');
    expect(run.stdout).toContain('--store <path|url>');
    expect(await authpipe(['help', command])).toMatchObject({ code: 0, stdout: run.stdout });
  });

  test('an unknown command, an unknown flag, a missing argument', async () => {
    expectExit(await authpipe(['frobnicate']), 2, 'INVALID_ARGUMENT');
    const flag = await authpipe(['list', '--colour']);
    expectExit(flag, 2, 'INVALID_ARGUMENT');
    expect(flag.stderr).toContain("'--colour'");
    expectExit(await authpipe(['show', 'attio']), 2, 'INVALID_ARGUMENT');
    expectExit(await authpipe(['list', '--limit', 'ten']), 2, 'INVALID_ARGUMENT');
  });
});

describe.each(STORE_KINDS)('on %s', (kind: StoreKind) => {
  let store: string;
  let keyFile: string;
  const cli = (args: readonly string[], env: Record<string, string> = {}, input = '') => authpipe([...args, '--store', store, '--master-key-file', keyFile], env, input);

  beforeAll(async () => {
    ({ store, keyFile } = await seededStore(kind, dir, `main-${kind}`, CONNECTIONS));
  });

  test('status: counts by provider and status; --json; no colour in a pipe', async () => {
    const run = await cli(['status']);
    expectExit(run, 0);
    expect(run.stdout).not.toContain('\x1b[');
    expect(run.stdout).toContain('4 connections: 4 active');
    const lines = run.stdout.split('\n');
    const header = lines.find((l) => l.startsWith('PROVIDER'))!;
    const attio = lines.find((l) => l.startsWith('attio'))!;
    // Right-aligned counts end under their headers.
    expect(attio.indexOf('2') + 1).toBe(header.indexOf('ACTIVE') + 'ACTIVE'.length);
    const doc = json(await cli(['status', '--json']));
    expect(doc).toMatchObject({ total: 4, byStatus: { active: 4 }, byProvider: { attio: { active: 2 }, close: { active: 1 }, hubspot: { active: 1 } }, healthy: true });
  });

  test('list: filters, paging with a cursor, --all, --json', async () => {
    const acme = json<{ connections: Connection[]; nextCursor: string | null }>(await cli(['list', '--tenant', 'org_acme', '--json']));
    expect(acme.connections.map((c) => c.userId)).toEqual(['u1', 'u2', 'u3']);
    expect(acme.nextCursor).toBeNull();
    expect(json<{ connections: Connection[] }>(await cli(['list', '--provider', 'close', '--json'])).connections).toMatchObject([{ userId: 'u3', type: 'api_key' }]);
    const none = await cli(['list', '--status', 'revoked']);
    expectExit(none, 0);
    expect(none.stdout).toBe('No connections match.\n');
    expectExit(await cli(['list', '--status', 'sleepy']), 2, 'INVALID_ARGUMENT');

    const first = await cli(['list', '--limit', '3']);
    expectExit(first, 0);
    const rows = first.stdout.trimEnd().split('\n');
    expect(rows).toHaveLength(4); // the header and 3 rows
    expect(rows[0]).toMatch(/^TENANT\s+PROVIDER\s+USER\s+TYPE\s+STATUS\s+EXPIRES\s+LAST ERROR$/);
    for (const row of rows.slice(1)) expect(row.indexOf('active')).toBe(rows[0]!.indexOf('STATUS'));
    const cursor = /--cursor (\S+)/.exec(first.stderr)![1]!;
    const rest = json<{ connections: Connection[]; nextCursor: string | null }>(await cli(['list', '--cursor', cursor, '--json']));
    expect(rest.connections.map((c) => `${c.tenantId}/${c.userId}`)).toEqual(['org_beta/u4']);
    expect(rest.nextCursor).toBeNull();
    expect(json<{ connections: Connection[] }>(await cli(['list', '--all', '--json'])).connections).toHaveLength(4);
  });

  test('show: the metadata, never the secret; a missing connection exits 2', async () => {
    const run = await cli(['show', 'hubspot', 'org_beta', 'u4']);
    expectExit(run, 0);
    expect(run.stdout).toMatch(/^Status\s+active$/m);
    expect(run.stdout).toMatch(/^Refresh token\s+yes$/m);
    expect(run.stdout).toMatch(/^Expires\s+\d{4}-\d\d-\d\dT.*\(in (59|60)m\)$/m);
    expect(json(await cli(['show', 'attio', 'org_acme', 'u1', '--json']))).toMatchObject({ provider: 'attio', userId: 'u1', scopes: ['record_permission:read'], type: 'oauth2' });
    expectExit(await cli(['show', 'attio', 'org_acme', 'nobody']), 2, 'CONNECTION_NOT_FOUND');
  });

  test('a wrong master key, no key, an unreachable store: exit 2 with the reason', async () => {
    const wrongKeyFile = join(dir, `wrong-${kind}.key`);
    writeFileSync(wrongKeyFile, newKey());
    chmodSync(wrongKeyFile, 0o644);
    const wrong = await authpipe(['status', '--store', store, '--master-key-file', wrongKeyFile]);
    expectExit(wrong, 2, 'VAULT_KEY_MISMATCH');
    expect(wrong.stderr).toContain('authpipe: hint: ');
    expect(wrong.stderr).toContain(`authpipe: warning: --master-key-file ${wrongKeyFile} can be read by other users: chmod 600 it`);
    // AUTHPIPE_MASTER_KEY works as the key file does, and its absence is refused, not a dev key.
    const key = newKey();
    expectExit(await authpipe(['status', '--store', store], { AUTHPIPE_MASTER_KEY: key }), 2, 'VAULT_KEY_MISMATCH');
    expectExit(await authpipe(['status', '--store', store]), 2, 'INVALID_ARGUMENT');
    // --debug adds the stack.
    expect((await authpipe(['status', '--store', store, '--master-key-file', wrongKeyFile, '--debug'])).stderr).toMatch(/^\s+at /m);
    if (kind === 'sqlite') {
      const missing = join(dir, 'no-such-store.db');
      const run = await authpipe(['list', '--store', missing, '--master-key-file', keyFile]);
      expectExit(run, 2, 'STORE_ERROR');
      expect(run.stderr).toContain('no store at');
      expect(existsSync(missing)).toBe(false); // not created
      expectExit(await authpipe(['status'], { AUTHPIPE_MASTER_KEY: key }), 2, 'STORE_ERROR'); // the default ./.authpipe/authpipe.db
    } else {
      const unreachable = await authpipe(['status', '--store', 'postgres://postgres@127.0.0.1:1/test?schema=nowhere', '--master-key-file', keyFile]);
      expectExit(unreachable, 2, 'STORE_ERROR');
      // A schema that holds no store is not created (opening it would make one).
      const schema = `authpipe_jest_absent_${Date.now()}`;
      const absent = await authpipe(['list', '--store', `${POSTGRES_URL}?schema=${schema}`, '--master-key-file', keyFile]);
      expectExit(absent, 2, 'STORE_ERROR');
      expect(absent.stderr).toContain(`no Authpipe store in schema '${schema}'`);
      expect(psql(`SELECT count(*) FROM information_schema.schemata WHERE schema_name = '${schema}'`)).toBe('0');
    }
  });

  test('import: every line checked first; a bad line is named and nothing is imported', async () => {
    const file = join(dir, `bad-${kind}.jsonl`);
    const good = (user: string) => JSON.stringify({ provider: 'attio', tenantId: 'org_import', userId: user, accessToken: `${SECRET}-${user}` });
    writeFileSync(
      file,
      [
        good('a'),
        good('b'),
        `{"provider":"attio","tenantId":"org_import","userId":"c","accessToken":"${SECRET}"`, // line 3: no closing brace
        '',
        JSON.stringify({ provider: 'attio', tenantId: 'org_import', userId: 'd', access_token: SECRET }), // line 5
        good('a'), // line 6: the same connection as line 1
        JSON.stringify({ provider: 'attio', tenantId: 'org_import', userId: 'e', accessToken: SECRET, expiresAt: 1_900_000_000 }), // line 7: seconds
        JSON.stringify({ provider: 'nosuchcrm', tenantId: 'org_import', userId: 'f', accessToken: SECRET }), // line 8: the core's check
      ].join('\n'),
    );
    const run = await cli(['import', file, '--batch-size', '2']);
    expectExit(run, 2, 'INVALID_ARGUMENT');
    expect(run.stderr).toMatch(/^authpipe: INVALID_ARGUMENT: line 3: not valid JSON/m);
    expect(run.stderr).toMatch(/^authpipe: INVALID_ARGUMENT: line 5: unknown field 'access_token' \(did you mean 'accessToken'\?\)$/m);
    expect(run.stderr).toMatch(/^authpipe: INVALID_ARGUMENT: line 6: the same connection .* as line 1$/m);
    expect(run.stderr).toMatch(/^authpipe: INVALID_ARGUMENT: line 7: expiresAt looks like seconds/m);
    expect(run.stderr).toMatch(/^authpipe: UNKNOWN_PROVIDER: line 8: /m);
    expect(run.stderr).toMatch(/5 invalid lines of 7; nothing was imported$/m);
    expect(run.stderr).not.toMatch(/line (1|2|4):/);
    expect(run.stdout).toBe('');
    expect(json<{ connections: unknown[] }>(await cli(['list', '--tenant', 'org_import', '--json'])).connections).toHaveLength(0);
  });

  test('import: batches, --dry-run, --json; the tokens are stored', async () => {
    const file = join(dir, `good-${kind}.jsonl`);
    const lines = Array.from({ length: 5 }, (_, i) =>
      JSON.stringify({ provider: 'attio', tenantId: 'org_import', userId: `user${i}`, accessToken: `${SECRET}-${i}`, expiresAt: '2031-01-01T00:00:00Z', scopes: ['a'] }),
    );
    lines.push(JSON.stringify({ provider: 'close', tenantId: 'org_import', userId: 'keyed', apiKey: `${SECRET}-key` }));
    writeFileSync(file, `${lines.join('\r\n')}\r\n\r\n`);
    const dry = await cli(['import', file, '--dry-run']);
    expectExit(dry, 0);
    expect(dry.stdout).toContain('all 6 lines valid; nothing imported');
    expect(json<{ connections: unknown[] }>(await cli(['list', '--tenant', 'org_import', '--json'])).connections).toHaveLength(0);

    const run = await cli(['import', file, '--batch-size', '4', '--json']);
    expectExit(run, 0);
    expect(json(run)).toEqual({ file, imported: 6, batches: 2, dryRun: false, interrupted: false });
    expect(run.stderr).toBe(''); // no progress bar in a pipe
    const reader = new Authpipe({ store, masterKey: readFileSync(keyFile, 'utf8').trim(), healthCheckIntervalMs: 0 });
    try {
      expect(await reader.getCredential({ provider: 'attio', tenantId: 'org_import', userId: 'user3' })).toMatchObject({ credential: `${SECRET}-3`, expiresAt: new Date('2031-01-01T00:00:00Z') });
      expect((await reader.getCredential({ provider: 'close', tenantId: 'org_import', userId: 'keyed' })).credential).toBe(`${SECRET}-key`);
    } finally {
      await reader.close();
    }
    const again = await cli(['import', file]); // idempotent: replaces
    expectExit(again, 0);
    expect(again.stdout).toMatch(/^Imported 6 connections from .* in 1 batch \(/);
  });

  test('delete-tenant: refused without --yes when stdin is not a terminal; --yes deletes', async () => {
    const refused = await cli(['delete-tenant', 'org_import'], {}, 'org_import\n');
    expectExit(refused, 2, 'INVALID_ARGUMENT');
    expect(refused.stderr).toContain('pass --yes');
    expect(json<{ connections: unknown[] }>(await cli(['list', '--tenant', 'org_import', '--json'])).connections).toHaveLength(6);
    const deleted = await cli(['delete-tenant', 'org_import', '--yes', '--json']);
    expectExit(deleted, 0);
    expect(json(deleted)).toEqual({ tenantId: 'org_import', connections: 6, secrets: 0, sessions: 0, flows: 0 });
    expect(json<{ connections: unknown[] }>(await cli(['list', '--tenant', 'org_import', '--json'])).connections).toHaveLength(0);
    const nothing = await cli(['delete-tenant', 'org_import', '-y']);
    expectExit(nothing, 0);
    expect(nothing.stdout).toContain('had nothing stored');
  });

  test('doctor: a checklist; a bad provider is a finding (exit 1), and so is a wrong key', async () => {
    const run = await cli(['doctor']);
    expectExit(run, 0);
    expect(run.stdout).toMatch(/^ok\s+store\s+/m);
    expect(run.stdout).toMatch(/^ok\s+schema\s+version \d+, as this build expects$/m);
    expect(run.stdout).toMatch(/^ok\s+master keys\s+primary 'k-[0-9a-f]+' wraps 2 of 2 tenant keys$/m);
    expect(run.stdout).toMatch(/^skip\s+providers\s+no --providers file given$/m);
    expect(run.stdout).toMatch(kind === 'postgres' ? /^ok\s+clock\s+\d+ ms (ahead of|behind) PostgreSQL's/m : /^ok\s+clock\s+the newest write in the store is/m);

    const providers = join(dir, `providers-${kind}.json`);
    writeFileSync(providers, JSON.stringify({ attio: { clientId: 'id', clientSecret: 'secret' }, mycrm: { clientId: 'id' } }));
    const doc = json<{ ok: boolean; checks: Array<{ name: string; status: string; detail: string }> }>(await cli(['doctor', '--providers', providers, '--json']));
    expect(doc.ok).toBe(false);
    expect(doc.checks).toEqual(
      expect.arrayContaining([
        { name: 'provider attio', status: 'ok', detail: 'valid' },
        { name: 'provider mycrm', status: 'fail', detail: expect.stringMatching(/^INVALID_ARGUMENT: /) },
        { name: 'providers', status: 'warn', detail: expect.stringContaining('close (1), hubspot (1)') },
      ]),
    );
    expectExit(await cli(['doctor', '--providers', providers]), 1);

    const wrongKeyFile = join(dir, `doctor-wrong-${kind}.key`);
    writeFileSync(wrongKeyFile, newKey());
    const wrong = await authpipe(['doctor', '--store', store, '--master-key-file', wrongKeyFile]);
    expectExit(wrong, 1);
    expect(wrong.stdout).toMatch(/^fail\s+master keys\s+VAULT_KEY_MISMATCH: /m);
    const unreachable = kind === 'sqlite' ? join(dir, 'doctor-missing.db') : 'postgres://postgres@127.0.0.1:1/test?schema=nowhere';
    const missing = await authpipe(['doctor', '--store', unreachable, '--master-key-file', keyFile]);
    expectExit(missing, 1);
    expect(missing.stdout).toMatch(/^fail\s+store\s+STORE_ERROR: /m);
    expect(missing.stdout).toMatch(/^skip\s+clock\s+the store did not open$/m);
  });

  test('doctor: a write from the future fails the clock check', async () => {
    const seeded = await seededStore(kind, dir, `clock-${kind}`, [CONNECTIONS[0]!]);
    const future = Date.now() + 3_600_000;
    if (kind === 'sqlite') {
      // With a busy timeout: the seeding instance's engine may still be letting go of the file.
      execFileSync('sqlite3', ['-cmd', '.timeout 10000', seeded.store, `UPDATE connections SET updated_at = ${future}`]);
    } else {
      const schema = new URL(seeded.store).searchParams.get('schema')!;
      psql(`UPDATE ${schema}.connections SET updated_at = ${future}`);
    }
    const run = await authpipe(['doctor', '--store', seeded.store, '--master-key-file', seeded.keyFile]);
    expectExit(run, 1);
    expect(run.stdout).toMatch(/^fail\s+clock\s+the store holds a write from (59m|1h) in this machine's future/m);
  });

  test('rotate-key and retire-key: the master key rotation, step by step', async () => {
    const [k1, k2] = [newKey(), newKey()];
    const seeded = await seededStore(kind, dir, `rotation-${kind}`, CONNECTIONS, { masterKeys: [{ id: 'k1', key: k1 }] });
    const keysFile = (name: string, keys: Array<{ id: string; key: string }>) => {
      const path = join(dir, `${name}-${kind}.json`);
      writeFileSync(path, JSON.stringify(keys));
      return path;
    };
    const both = keysFile('both', [{ id: 'k2', key: k2 }, { id: 'k1', key: k1 }]);
    const run = (args: string[], keys = both) => authpipe([...args, '--store', seeded.store, '--master-keys-file', keys]);

    const early = await run(['retire-key', 'k1']);
    expectExit(early, 2, 'KEY_IN_USE');
    expect(early.stderr).toContain("run 'authpipe rotate-key'");
    expect((await run(['doctor'])).stdout).toMatch(/^warn\s+master keys\s+primary 'k2' wraps 0 of 2 tenant keys; also 'k1' \(configured active, wraps 2 tenant keys\): run 'authpipe rotate-key'/m);

    const rotated = await run(['rotate-key', '--json']);
    expectExit(rotated, 0);
    expect(json(rotated)).toEqual({ primaryKeyId: 'k2', rewrapped: 2, alreadyCurrent: 0, retirable: ['k1'] });
    const again = await run(['rotate-key']);
    expect(again.stdout).toContain("Rewrapped 0 tenant keys with master key 'k2' (2 already were).");
    expectExit(await run(['retire-key', 'k1']), 0);
    expectExit(await run(['status'], keysFile('new', [{ id: 'k2', key: k2 }])), 0);
    const retired = await run(['status'], keysFile('old', [{ id: 'k1', key: k1 }]));
    expectExit(retired, 2, 'INVALID_ARGUMENT');
    expect(retired.stderr).toContain("master key 'k1' was retired");

    const tenant = await run(['rotate-key', '--tenant', 'org_acme', '--tenant', 'org_beta', '--json'], keysFile('new', [{ id: 'k2', key: k2 }]));
    expectExit(tenant, 0);
    expect(json(tenant)).toEqual({ tenants: [{ tenantId: 'org_acme', generation: 2, resealed: 3 }, { tenantId: 'org_beta', generation: 2, resealed: 1 }] });
  });

  test('a missing or malformed keys file, providers file: exit 2 naming the flag, never the content', async () => {
    const broken = join(dir, `broken-${kind}.json`);
    writeFileSync(broken, `[{"id":"k1","key":"${SECRET}"`);
    const run = await authpipe(['status', '--store', store, '--master-keys-file', broken]);
    expectExit(run, 2, 'INVALID_ARGUMENT');
    expect(run.stderr).toContain('--master-keys-file');
    expectExit(await authpipe(['status', '--store', store, '--master-key-file', join(dir, 'nope.key')]), 2, 'INVALID_ARGUMENT');
    expectExit(await cli(['check', '--all', '--providers', join(dir, 'nope.json')]), 2, 'INVALID_ARGUMENT');
  });
});

test('a reader that stops early (| head) ends a long listing quietly', async () => {
  const many = Array.from({ length: 2000 }, (_, i) => ({ provider: 'attio', tenantId: 'org_many', userId: `user${i}`, accessToken: `token-${i}` }));
  const { store, keyFile } = await seededStore('sqlite', dir, 'epipe', many);
  const errors = join(dir, 'epipe.txt');
  // 2000 rows are more than a pipe holds: the CLI is still writing when head has gone.
  const shell = `node ${CLI} list --all --store '${store}' --master-key-file ${keyFile} 2> ${errors} | head -n 1; echo "exit \${PIPESTATUS[0]}"`;
  const out = execFileSync('bash', ['-c', shell], { encoding: 'utf8' });
  expect(out).toMatch(/^TENANT\s+PROVIDER.*\nexit 0\n$/);
  expect(readFileSync(errors, 'utf8')).toBe('');
});
