/**
 * Runs the generated hostile-input table in a process of its own (a crash or an abort then
 * fails the spec instead of ending Jest): `node -r ../ts-require.js child.ts <dir>`. Stores the
 * valid setup in `<dir>/store.db`, runs every case, and writes one JSON line per case to
 * `<dir>/cases.jsonl` (a `start` line first, so a crash names its case), then `summary.json`.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { appendFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Authpipe, AuthpipeError } from '../../..';
import { createSandbox } from '../../../dist/testing';
import { build, casesOf, SCHEMAS, SECRETS, validOf, importNode, PROVIDER, TENANT, REDIRECT_URI, type Case, type CallSchema, type Context } from './table';

const CASE_TIMEOUT_MS = 30_000;
const dir = process.argv[2]!;
const storePath = join(dir, 'store.db');
const log = join(dir, 'cases.jsonl');

/** How a call answered. */
export interface Outcome {
  ok: boolean;
  /** Thrown synchronously rather than rejected. */
  sync?: boolean;
  code?: string;
  /** Not an AuthpipeError: its constructor's name. */
  raw?: string;
  message?: string;
  hung?: boolean;
}

export interface CaseResult {
  name: string;
  call: string;
  family: string;
  oracle: string;
  outcome: Outcome;
  /** Empty when the case passed. */
  problems: string[];
  /** A success that changed the store (then restored). */
  changedStore?: boolean;
}

async function outcomeOf(schema: CallSchema, ctx: Context, args: unknown[]): Promise<Outcome> {
  let pending: unknown;
  try {
    pending = schema.run(ctx, args);
  } catch (err) {
    return { ...errorOutcome(err), sync: true };
  }
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<Outcome>((resolve) => (timer = setTimeout(() => resolve({ ok: false, hung: true }), CASE_TIMEOUT_MS)));
  try {
    return await Promise.race([Promise.resolve(pending).then((): Outcome => ({ ok: true }), errorOutcome), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function errorOutcome(err: unknown): Outcome {
  if (err instanceof AuthpipeError) return { ok: false, code: err.code, message: err.message };
  const name = (err as { constructor?: { name?: string } })?.constructor?.name ?? typeof err;
  return { ok: false, raw: name, message: String((err as Error)?.message ?? err).slice(0, 300) };
}

const signature = (o: Outcome) => (o.ok ? 'ok' : (o.code ?? `raw ${o.raw}`));

/** What the store holds, through the API: enough to see any write, timestamps included. */
async function snapshot(authpipe: Authpipe): Promise<string> {
  const { connections } = await authpipe.listConnections();
  const credentials = await Promise.all(connections.map((c) => authpipe.getCredential(c).then((x) => [x.credential, x.type, x.extras, x.expiresAt], (e: AuthpipeError) => e.code)));
  const secrets = await Promise.all(SECRETS.map((s) => authpipe.getSecret(s).catch((e: AuthpipeError) => e.code)));
  return JSON.stringify({ connections, credentials, secrets });
}

/** The valid setup: two connections (one with every field), two secrets. */
async function setUp(authpipe: Authpipe): Promise<void> {
  await authpipe.importConnection(validOf(importNode()) as never);
  await authpipe.importConnection({ provider: PROVIDER, tenantId: TENANT, userId: 'user_2', accessToken: 'tok_access_B' });
  for (const s of SECRETS) await authpipe.setSecret(s);
}

/** The SQLite file's tables, read with the sqlite3 CLI: what must equal the valid setup's. */
export function rawTables(path: string): Record<string, unknown> {
  const q = (sql: string) => JSON.parse(execFileSync('sqlite3', ['-cmd', '.timeout 10000', '-json', '-readonly', path, sql], { encoding: 'utf8' }) || '[]') as Array<Record<string, unknown>>;
  const tables = q("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name").map((r) => r.name as string);
  // No NUL in any text column of any table.
  const nul: Record<string, number> = {};
  for (const t of tables) {
    const textColumns = q(`SELECT name FROM pragma_table_info('${t}') WHERE type = 'TEXT'`).map((r) => r.name as string);
    for (const c of textColumns) {
      const [{ n }] = q(`SELECT count(*) AS n FROM "${t}" WHERE instr("${c}", char(0)) > 0`) as [{ n: number }];
      if (n > 0) nul[`${t}.${c}`] = n;
    }
  }
  return {
    tables,
    nul,
    master_keys: q('SELECT id, retired_at FROM master_keys ORDER BY id'),
    tenant_keys: q('SELECT tenant_id, generation, master_key_id FROM tenant_keys ORDER BY tenant_id'),
    deleted_tenant_keys: q('SELECT * FROM deleted_tenant_keys ORDER BY tenant_id'),
    connections: q(
      'SELECT tenant_id, provider, user_id, kind, status, scopes, account_id, expires_at, refresh_token IS NOT NULL AS has_refresh, extras IS NOT NULL AS has_extras FROM connections ORDER BY 1, 2, 3',
    ),
    secrets: q('SELECT tenant_id, provider, name FROM secrets ORDER BY 1, 2, 3'),
    longest_session_providers: q('SELECT coalesce(max(length(providers)), 0) AS n FROM connect_sessions'),
  };
}

/** Every row a write touches (ciphertexts and timestamps too), as one string: any write changes it. */
function digest(path: string): string {
  const sql = `SELECT group_concat(x, char(10)) FROM (
    SELECT 'c|' || tenant_id || '|' || provider || '|' || user_id || '|' || status || '|' || updated_at || '|' || version || '|' || hex(credential) AS x FROM connections
    UNION ALL SELECT 's|' || tenant_id || '|' || provider || '|' || name || '|' || updated_at || '|' || hex(value) FROM secrets
    UNION ALL SELECT 't|' || tenant_id || '|' || generation || '|' || master_key_id || '|' || hex(wrapped) FROM tenant_keys
    UNION ALL SELECT 'm|' || id || '|' || coalesce(retired_at, '') FROM master_keys
    UNION ALL SELECT 'd|' || tenant_id || '|' || generation FROM deleted_tenant_keys
    UNION ALL SELECT 'f|' || count(*) FROM connect_flows
    UNION ALL SELECT 'x|' || count(*) FROM connect_sessions
    ORDER BY 1)`;
  return execFileSync('sqlite3', ['-cmd', '.timeout 10000', '-readonly', path, sql], { encoding: 'utf8' });
}

/** The strings of a case's arguments (short ones: ids), to attribute rows an accepted case wrote. */
function stringsOf(value: unknown, out: Set<string>, depth = 0): void {
  if (typeof value === 'string') {
    if (value.length <= 300) out.add(value);
    return;
  }
  if (depth >= 4 || typeof value !== 'object' || value === null) return;
  try {
    const values = Array.isArray(value) ? value.slice(0, 10) : Object.values(value);
    for (const v of values) stringsOf(v, out, depth + 1);
  } catch {
    // A hostile object (a throwing Proxy): nothing it holds was read, so nothing was stored.
  }
}

async function main(): Promise<void> {
  const sandbox = await createSandbox({ provider: 'attio' });
  const masterKey = randomBytes(32).toString('base64');
  const options = {
    store: storePath,
    masterKey,
    healthCheckIntervalMs: 0,
    providers: { attio: sandbox.providerConfig({ redirectUri: REDIRECT_URI }) },
  };
  const authpipe = new Authpipe(options);
  await authpipe.ready();
  await setUp(authpipe);
  const ctx: Context = { authpipe, sandbox, masterKey };
  const rawBefore = rawTables(storePath);
  let reference = await snapshot(authpipe);
  let file = digest(storePath);
  const accepted = new Set<string>();

  const results: CaseResult[] = [];
  let restores = 0;
  for (const schema of SCHEMAS) {
    const valid = await outcomeOf(schema, ctx, build(schema, ctx).args);
    if (schema.mutates) {
      stringsOf(build(schema, ctx).args, accepted);
      if ((await snapshot(authpipe)) !== reference) {
        await setUp(authpipe);
        reference = await snapshot(authpipe);
      }
      file = digest(storePath);
    }
    const absent = new Map<string, Outcome>();
    for (const c of casesOf(schema, ctx)) {
      appendFileSync(log, `${JSON.stringify({ start: c.name })}\n`);
      const references = absent.size;
      const expected = c.oracle === 'as-valid' ? valid : c.oracle === 'as-absent' ? await absentOutcome(schema, ctx, c, absent) : undefined;
      if (schema.mutates && absent.size > references) {
        // The reference run with the field left out may have written (a valid call): count it.
        stringsOf(build(schema, ctx, c.path, { absent: true }).args, accepted);
        file = digest(storePath);
      }
      const placement = c.hostile.place(c.node, valueAt(schema, ctx, c));
      const built = build(schema, ctx, c.path, placement);
      const polluted = built.pollute;
      if (polluted) (Object.prototype as Record<string, unknown>)[polluted.key] = polluted.value;
      let outcome: Outcome;
      try {
        outcome = await outcomeOf(schema, ctx, built.args);
      } finally {
        if (polluted) delete (Object.prototype as Record<string, unknown>)[polluted.key];
      }
      const problems = judge(schema, c, outcome, expected);
      let changedStore: boolean | undefined;
      if (schema.mutates) {
        const after = digest(storePath);
        if (after !== file && !outcome.ok) problems.push('rejected, but the SQLite file changed');
        if (outcome.ok) stringsOf(built.args, accepted);
        file = after;
        const now = await snapshot(authpipe);
        if (now !== reference) {
          changedStore = true;
          if (!outcome.ok) problems.push('rejected, but the store changed');
          restores++;
          await setUp(authpipe);
          reference = await snapshot(authpipe);
          file = digest(storePath);
        }
      }
      const result: CaseResult = { name: c.name, call: c.call, family: c.hostile.family, oracle: c.oracle, outcome, problems, changedStore };
      results.push(result);
      appendFileSync(log, `${JSON.stringify(result)}\n`);
    }
  }

  const finalSnapshot = await snapshot(authpipe);
  await authpipe.close();
  const rawAfter = rawTables(storePath);
  // The store reopens, with the setup's contents.
  const reopened = new Authpipe(options);
  const reopenedSnapshot = await snapshot(reopened);
  await reopened.close();
  await sandbox.close();
  writeFileSync(
    join(dir, 'summary.json'),
    JSON.stringify({ results: results.length, restores, rawBefore, rawAfter, finalSnapshot, reopenedSnapshot, reference, accepted: [...accepted] }),
  );
}

/** The valid value at a case's path (what prototype placements copy). */
function valueAt(schema: CallSchema, ctx: Context, c: Case): unknown {
  let value: unknown = build(schema, ctx).args;
  for (const p of c.path) value = (value as Record<string | number, unknown> | undefined)?.[p];
  return value;
}

async function absentOutcome(schema: CallSchema, ctx: Context, c: Case, memo: Map<string, Outcome>): Promise<Outcome> {
  const key = JSON.stringify(c.path);
  let outcome = memo.get(key);
  if (outcome === undefined) {
    outcome = await outcomeOf(schema, ctx, build(schema, ctx, c.path, { absent: true }).args);
    memo.set(key, outcome);
  }
  return outcome;
}

const NEVER_VALID_FAMILIES = new Set(['wrong type', 'throwing', 'proxy']);

function judge(schema: CallSchema, c: Case, outcome: Outcome, expected: Outcome | undefined): string[] {
  const problems: string[] = [];
  const codes = new Set<string>(schema.codes ?? ['INVALID_ARGUMENT']);
  if (outcome.hung) return [`did not settle within ${CASE_TIMEOUT_MS} ms`];
  if (outcome.raw) return [`raw ${outcome.raw} escaped: ${outcome.message}`];
  if (!outcome.ok) {
    if (!codes.has(outcome.code!)) problems.push(`code ${outcome.code} is not one of ${[...codes].join(', ')}: ${outcome.message}`);
    if (/[\u0000-\u0008\u000e-\u001f]/.test(outcome.message ?? '')) problems.push('the message carries a control character');
    if ((outcome.message ?? '').length > 1000) problems.push(`the message is ${outcome.message!.length} characters long`);
  }
  if (c.oracle === 'reject') {
    if (outcome.ok) problems.push('resolved, but must reject');
    else if (NEVER_VALID_FAMILIES.has(c.hostile.family) && outcome.code !== 'INVALID_ARGUMENT') problems.push(`must be INVALID_ARGUMENT, was ${outcome.code}`);
  }
  if (expected && signature(expected) !== signature(outcome)) problems.push(`answered ${signature(outcome)}, as the ${c.oracle === 'as-valid' ? 'valid arguments' : 'field left out'} would not (${signature(expected)})`);
  return problems;
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(2);
});
