import { execFileSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as testing from '../dist/testing';
import { createSandbox, type Sandbox } from '../dist/testing';
import * as pkg from '..';
import { Authpipe, AuthpipeError } from '..';
import { newKey, tempDir } from './helpers';
import type { CaseResult } from './support/hostile/child';
import { NOT_IN_TABLE, SCHEMAS } from './support/hostile/table';

const SUPPORT = join(__dirname, 'support');

describe('hostile input: a table generated from every public call', () => {
  test('every public call has an argument schema in the table (or a reason it is not there)', () => {
    const publicCalls = [
      ...Object.getOwnPropertyNames(Authpipe.prototype),
      ...Object.getOwnPropertyNames(Authpipe).filter((name) => !['length', 'name', 'prototype'].includes(name)),
      ...Object.keys(pkg).map((name) => (name === 'Authpipe' ? 'new Authpipe' : name)),
      ...Object.keys(testing),
    ];
    const inTable = new Set(SCHEMAS.map((s) => s.call.replace(/ \(.*\)$/, '')));
    const missing = publicCalls.filter((name) => !inTable.has(name) && !(name in NOT_IN_TABLE));
    expect(missing).toEqual([]);
    // And the table names nothing that is not public (it cannot describe a call that is gone).
    const stale = [...inTable, ...Object.keys(NOT_IN_TABLE)].filter((name) => !publicCalls.includes(name));
    expect(stale).toEqual([]);
  });

  const dir = tempDir();
  test('each case rejects with an AuthpipeError (or succeeds where the value is fine), in a process that survives, storing nothing half-way', async () => {
    const exit = await new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, ['-r', join(SUPPORT, 'ts-require.js'), join(SUPPORT, 'hostile', 'child.ts'), dir], { cwd: dir, env: { ...process.env, NODE_ENV: 'test' } });
      let stderr = '';
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      child.on('exit', (code, signal) => resolve({ code, signal, stderr }));
    });
    const lines = readFileSync(join(dir, 'cases.jsonl'), 'utf8').trim().split('\n').map((line) => JSON.parse(line) as CaseResult | { start: string });
    const lastStarted = [...lines].reverse().find((l): l is { start: string } => 'start' in l)?.start;
    // A crash or an abort ends the child, not Jest, and names the case it was in.
    expect({ code: exit.code, signal: exit.signal, lastStarted: exit.code === 0 ? undefined : lastStarted, stderr: exit.code === 0 ? '' : exit.stderr.slice(-2000) }).toEqual({
      code: 0,
      signal: null,
      lastStarted: undefined,
      stderr: '',
    });

    const results = lines.filter((l): l is CaseResult => !('start' in l));
    const summary = JSON.parse(readFileSync(join(dir, 'summary.json'), 'utf8')) as Record<string, unknown>;
    expect(results.length).toBe(summary.results);
    expect(results.filter((r) => r.problems.length > 0).map((r) => `${r.name}: ${r.problems.join('; ')}`)).toEqual([]);

    // The store holds what the valid setup stored: through the API (also once reopened), and in
    // the SQLite file's tables, with no NUL in any text column.
    expect(summary.finalSnapshot).toBe(summary.reference);
    expect(summary.reopenedSnapshot).toBe(summary.finalSnapshot);
    // Rows: the setup's are all there, unchanged; any other was written by a case that resolved
    // (a valid call, e.g. a tenant id of three spaces), and names that case's ids. A rejected
    // case changing the file at all is a problem the child reports per case.
    type Row = Record<string, unknown>;
    const rawBefore = summary.rawBefore as Record<string, Row[]>;
    const rawAfter = summary.rawAfter as Record<string, Row[]>;
    const accepted = new Set(summary.accepted as string[]);
    expect(rawAfter.tables).toEqual(rawBefore.tables);
    expect(rawAfter.nul).toEqual({});
    for (const table of ['master_keys', 'tenant_keys', 'connections', 'secrets', 'deleted_tenant_keys']) {
      const before = rawBefore[table]!.map((row) => JSON.stringify(row));
      const after = rawAfter[table]!.map((row) => JSON.stringify(row));
      expect({ table, missing: before.filter((row) => !after.includes(row)) }).toEqual({ table, missing: [] });
      const unexplained = rawAfter[table]!.filter((row) => !before.includes(JSON.stringify(row)) && !['tenant_id', 'user_id', 'name'].every((k) => row[k] === undefined || accepted.has(row[k] as string)));
      expect({ table, unexplained }).toEqual({ table, unexplained: [] });
    }
    const [before, after] = [rawBefore.longest_session_providers, rawAfter.longest_session_providers];
    // Sessions the table created name each provider once (a 100,000-copy list is one entry).
    expect(before).toEqual([{ n: 0 }]);
    expect((after as Array<{ n: number }>)[0]!.n).toBeLessThan(100);

    const count = (key: (r: CaseResult) => string) => Object.fromEntries([...group(results, key)].sort(([a], [b]) => a.localeCompare(b)));
    const figures = {
      cases: results.length,
      calls: new Set(results.map((r) => r.call)).size,
      outcomes: count((r) => (r.outcome.ok ? 'resolved' : `rejected ${r.outcome.code}`)),
      thrownSynchronously: results.filter((r) => r.outcome.sync).length,
      resolvedAndChangedTheStore: results.filter((r) => r.changedStore).length,
      byFamily: count((r) => r.family),
      byOracle: count((r) => r.oracle),
    };
    console.log(`hostile-input table:\n${JSON.stringify(figures, null, 2)}`);
  }, 600_000);
});

/**
 * Every field name the binding reads from the objects it is handed: a polluted Object.prototype
 * carrying any of them must change nothing (napi reads a missing field through the prototype).
 */
const BINDING_FIELDS = ['id', 'key', 'retired', 'store', 'masterKeys', 'production', 'providers', 'httpTimeoutMs', 'providerConcurrency', 'healthCheckIntervalMs', 'provider', 'tenantId', 'userId', 'accessToken', 'refreshToken', 'expiresAt', 'apiKey', 'scopes', 'extras', 'status', 'limit', 'cursor', 'redirectUri', 'browserBinding', 'params', 'state', 'error'];

describe('a polluted Object.prototype', () => {
  const redirectUri = 'http://127.0.0.1:9/authpipe/callback/attio';

  /** Opens, imports, reads, starts a flow through the handler and finishes a bogus callback. */
  async function scenario(sandbox: Sandbox, pollute: boolean): Promise<unknown> {
    const polluted = Object.prototype as Record<string, unknown>;
    const on = () => pollute && BINDING_FIELDS.forEach((name) => (polluted[name] = name === 'retired' ? true : name === 'scopes' ? ['polluted'] : `polluted_${name}`));
    const off = () => BINDING_FIELDS.forEach((name) => delete polluted[name]);
    const settle = (p: Promise<unknown>) => p.then((v) => ({ ok: v }), (e: unknown) => ({ code: (e as AuthpipeError).code ?? String(e) }));
    on();
    try {
      const authpipe = new Authpipe({ store: ':memory:', masterKey: newKey(), healthCheckIntervalMs: 0, providers: { attio: sandbox.providerConfig({ redirectUri }) } });
      try {
        const ref = { provider: 'attio', tenantId: 't', userId: 'u' };
        const imported = await settle(authpipe.importConnection({ ...ref, accessToken: 'tok' }).then((c) => [c.scopes, c.expiresAt, c.hasRefreshToken]));
        const credential = await settle(authpipe.getCredential(ref).then((c) => [c.credential, c.extras]));
        const { token } = await authpipe.createConnectSession({ tenantId: 't', userId: 'u' });
        const started = await authpipe.fetchHandler({ appOrigin: 'http://127.0.0.1:9' })(new Request(`http://127.0.0.1:9/authpipe/connect/attio?session=${token}`));
        const location = new URL(started.headers.get('location') ?? 'http://none/');
        const callback = await settle(authpipe.handleCallback({ query: { state: 'no_such_state_0123456789', code: 'c' } }));
        const listed = await settle(authpipe.listConnections({ tenantId: 't' }).then((p) => p.connections.length));
        return { imported, credential, started: [started.status, location.searchParams.get('redirect_uri'), location.searchParams.get('scope')], callback, listed };
      } finally {
        off();
        await authpipe.close();
      }
    } finally {
      off();
    }
  }

  test('changes nothing the binding is handed (a missing field is never read from it)', async () => {
    const sandbox = await createSandbox({ provider: 'attio' });
    try {
      const clean = await scenario(sandbox, false);
      expect(clean).toMatchObject({ imported: { ok: expect.anything() }, started: [302, redirectUri, null], callback: { code: 'INVALID_STATE' } });
      expect(await scenario(sandbox, true)).toEqual(clean);
    } finally {
      await sandbox.close();
    }
  });
});

function group<T>(items: readonly T[], key: (item: T) => string): Map<string, number> {
  const out = new Map<string, number>();
  for (const item of items) out.set(key(item), (out.get(key(item)) ?? 0) + 1);
  return out;
}

describe('close() in the middle of every kind of call', () => {
  const dir = tempDir();
  const masterKey = newKey();
  const redirectUri = 'https://app.example/authpipe/callback/attio';
  let sandbox: Sandbox;
  beforeAll(async () => {
    sandbox = await createSandbox({ provider: 'attio' });
    // Provider calls stay in flight while close() runs (an answer delayed, not a test sleeping).
    sandbox.delay('identity', 50);
  });
  afterAll(() => sandbox.close());

  const base = { provider: 'attio', tenantId: 'org_close' };
  const COPIES = 4;
  /** One of each kind of call; `i` keeps the copies' writes apart. */
  const KINDS: Record<string, (a: Authpipe, i: number) => Promise<unknown>> = {
    getCredential: (a) => a.getCredential({ ...base, userId: 'kept' }),
    getConnection: (a) => a.getConnection({ ...base, userId: 'kept' }),
    listConnections: (a) => a.listConnections({ tenantId: base.tenantId }),
    importConnection: (a, i) => a.importConnection({ ...base, userId: `imported_${i}`, accessToken: `tok_imported_${i}` }),
    importConnections: (a, i) =>
      a.importConnections([0, 1].map((j) => ({ ...base, userId: `batch_${i}_${j}`, accessToken: `tok_batch_${i}_${j}` }))),
    deleteConnection: (a, i) => a.deleteConnection({ ...base, userId: `doomed_${i}` }),
    startConnect: (a) => a.startConnect({ ...base, userId: 'kept', redirectUri }),
    handleCallback: (a) => a.handleCallback({ query: { state: 'no_such_state_0123456789', code: 'c' } }),
    createConnectSession: (a) => a.createConnectSession({ tenantId: base.tenantId, userId: 'kept' }),
    setSecret: (a, i) => a.setSecret({ tenantId: base.tenantId, name: `secret_${i}`, value: `value_${i}` }),
    getSecret: (a) => a.getSecret({ tenantId: base.tenantId, name: 'kept' }),
    deleteSecret: (a, i) => a.deleteSecret({ tenantId: base.tenantId, name: `doomed_${i}` }),
    refreshConnection: (a) => a.refreshConnection({ ...base, userId: 'refreshed' }),
    checkConnection: (a) => a.checkConnection({ ...base, userId: 'probed' }),
    rotateMasterKey: (a) => a.rotateMasterKey(),
    deleteTenant: (a, i) => a.deleteTenant(`tenant_doomed_${i}`),
    health: (a) => a.health(),
    stats: (a) => a.stats(),
    ready: (a) => a.ready(),
  };

  const open = (store: string) => new Authpipe({ store, masterKey, healthCheckIntervalMs: 0, providers: { attio: sandbox.providerConfig({ redirectUri }) } });

  async function seed(a: Authpipe): Promise<void> {
    await a.importConnection({ ...base, userId: 'kept', accessToken: 'tok_kept' });
    await a.importConnection({ ...base, userId: 'refreshed', accessToken: 'tok_refreshed', refreshToken: 'rt_refreshed', expiresAt: Date.now() + 3_600_000 });
    await a.importConnection({ ...base, userId: 'probed', accessToken: 'tok_probed' });
    for (let i = 0; i < COPIES; i++) await a.importConnection({ ...base, userId: `doomed_${i}`, accessToken: `tok_doomed_${i}` });
    await a.setSecret({ tenantId: base.tenantId, name: 'kept', value: 'kept_value' });
    for (let i = 0; i < COPIES; i++) await a.setSecret({ tenantId: base.tenantId, name: `doomed_${i}`, value: 'x' });
  }

  /** How each kind answers with nothing closing: it may answer so, or CLOSED, when close() interrupts it. */
  const alone = new Map<string, string>();
  const answer = (p: Promise<unknown>) => p.then(() => 'resolved', (e: unknown) => (e instanceof AuthpipeError ? e.code : `raw ${String(e)}`));
  beforeAll(async () => {
    const a = open(join(dir, 'alone.db'));
    await seed(a);
    for (const [kind, run] of Object.entries(KINDS)) alone.set(kind, await answer(run(a, 0)));
    await a.close();
  });

  const POINTS: Record<string, (calls: Promise<unknown>[]) => Promise<void>> = {
    'in the same tick as the calls': async () => {},
    'after one microtask': () => Promise.resolve(),
    'after ten microtasks': async () => {
      for (let i = 0; i < 10; i++) await Promise.resolve();
    },
    'after a macrotask (setImmediate)': () => new Promise((resolve) => setImmediate(resolve)),
    'once the first call has settled': (calls) => Promise.race(calls.map((c) => c.catch(() => {}))).then(() => {}),
  };

  test.each(Object.keys(POINTS))('close() %s: every call settles, as it would alone or CLOSED; the store reopens consistent', async (point) => {
    const store = join(dir, `${point.replace(/\W+/g, '-')}.db`);
    const authpipe = open(store);
    await seed(authpipe);
    const started = Object.entries(KINDS).flatMap(([kind, run]) => Array.from({ length: COPIES }, (_, i) => ({ kind, i, answer: answer(run(authpipe, i)) })));
    await POINTS[point]!(started.map((s) => s.answer));
    const closing = authpipe.close();
    // Calls made after close() began are refused too.
    const late = Object.entries(KINDS).map(([kind, run]) => ({ kind, i: -1, answer: answer(run(authpipe, 99)) }));
    await closing;
    const answers = await Promise.all([...started, ...late].map(async (s) => ({ ...s, got: await s.answer })));
    const wrong = answers.filter((a) => a.got !== 'CLOSED' && (a.i === -1 || a.got !== alone.get(a.kind))).map((a) => `${a.kind}#${a.i}: ${a.got} (alone: ${alone.get(a.kind)})`);
    expect(wrong).toEqual([]);
    const interrupted = answers.filter((a) => a.i >= 0 && a.got === 'CLOSED').length;
    console.log(`close() ${point}: ${interrupted} of ${started.length} calls answered CLOSED, the others as alone; ${late.length} later calls CLOSED`);

    // Reopened: every write that resolved is there whole, everything listed reads back.
    expect(execFileSync('sqlite3', ['-cmd', '.timeout 10000', store, 'PRAGMA integrity_check'], { encoding: 'utf8' }).trim()).toBe('ok');
    const reopened = open(store);
    try {
      const resolved = (kind: string) => answers.filter((a) => a.kind === kind && a.got === 'resolved' && a.i >= 0).map((a) => a.i);
      for (const i of resolved('importConnection')) expect((await reopened.getCredential({ ...base, userId: `imported_${i}` })).credential).toBe(`tok_imported_${i}`);
      for (const i of resolved('setSecret')) expect(await reopened.getSecret({ tenantId: base.tenantId, name: `secret_${i}` })).toBe(`value_${i}`);
      const { connections } = await reopened.listConnections({ tenantId: base.tenantId, limit: 1000 });
      for (const c of connections) {
        const read = await answer(reopened.getCredential(c));
        expect([c.userId, read]).toEqual([c.userId, expect.stringMatching(/^(resolved|CONNECTION_REVOKED|CONNECTION_EXPIRED)$/)]);
      }
      // A batch is all there or not at all.
      for (let i = 0; i < COPIES; i++) {
        const present = connections.filter((c) => c.userId.startsWith(`batch_${i}_`)).length;
        expect({ batch: i, whole: present === 0 || present === 2 }).toEqual({ batch: i, whole: true });
      }
      expect(await reopened.getSecret({ tenantId: base.tenantId, name: 'kept' })).toBe('kept_value');
    } finally {
      await reopened.close();
    }
  });
});
