/**
 * `doctor`: a checklist of what an instance needs, each item ok, warn, fail or skip with its
 * reason: the store opens, its schema is the one this build expects, the configured master keys
 * match the store's, every provider in the providers file is valid (and its issuer reachable),
 * and this machine's clock agrees with the store's. A failed item is a finding (exit 1), not a
 * failure to run: only bad arguments exit 2.
 * @internal
 */
import { Authpipe } from '../../index';
import { AuthpipeError } from '../../errors';
import { nativeHandle } from '../../internal';
import type { StoreInfoOutput } from '../../../binding';
import type { ProviderConfig } from '../../types';
import { EXIT_OK, EXIT_PROBLEMS, type CommandSpec } from '../args';
import type { Context } from '../context';
import { duration, plural, printable } from '../output';

export const doctorCommand: CommandSpec = {
  name: 'doctor',
  summary: 'Check the store, schema, master keys, providers and clock',
  description: [
    'Checks, and prints a checklist:',
    '  store        the store opens with the configured master key(s)',
    '  schema       the store is at the schema version this build expects',
    "  master keys  the configured keys match the store's; tenant keys still wrapped by an older key",
    '  providers    each provider in --providers is valid (custom ones: their issuer answers discovery),',
    '               and every provider the store has connections for is configured',
    "  clock        this machine's clock agrees with PostgreSQL's, and no write in the store is from its future",
  ].join('\n'),
  positionals: [],
  flags: {},
  examples: ['authpipe doctor --providers providers.json', 'authpipe doctor --json | jq ".checks[] | select(.status == \\"fail\\")"'],
  problems: 'a check failed (warnings do not count).',
};

type Status = 'ok' | 'warn' | 'fail' | 'skip';

interface Check {
  name: string;
  status: Status;
  detail: string;
}

/** Clock differences up to this are fine; past FAIL, leases between instances misjudge expiry. */
const CLOCK_WARN_MS = 1_000;
const CLOCK_FAIL_MS = 5_000;

export async function doctor(ctx: Context): Promise<number> {
  const checks: Check[] = [];
  const add = (name: string, status: Status, detail: string) => checks.push({ name, status, detail: printable(detail) });
  let providers: Record<string, ProviderConfig> | undefined;
  let providersError: AuthpipeError | undefined;
  try {
    providers = ctx.providers();
  } catch (err) {
    providersError = asAuthpipeError(err);
  }

  let authpipe: Authpipe | undefined;
  const keysError = failure(() => ctx.keys());
  const storeError = failure(() => ctx.store());
  if (keysError || storeError) {
    add('store', storeError ? 'fail' : 'skip', storeError ? `${storeError.code}: ${storeError.message}` : 'no usable master key to open it with');
    add('schema', 'skip', 'the store did not open');
    add('master keys', keysError ? 'fail' : 'skip', keysError ? `${keysError.code}: ${keysError.message}` : 'the store did not open');
  } else {
    try {
      // Without providers: a provider that fails must not hide what the store says.
      authpipe = await ctx.open({});
    } catch (err) {
      const e = asAuthpipeError(err);
      if (e.code === 'VAULT_KEY_MISMATCH' || (e.code === 'INVALID_ARGUMENT' && /master ?key/i.test(e.message))) {
        add('store', 'ok', 'reachable (it refused the master key)');
        add('schema', 'skip', 'the store did not open');
        add('master keys', 'fail', `${e.code}: ${e.message}`);
      } else if (e.code === 'STORE_ERROR' && /schema version/.test(e.message)) {
        add('store', 'ok', 'reachable');
        add('schema', 'fail', e.message);
        add('master keys', 'skip', 'the store did not open');
      } else {
        add('store', 'fail', `${e.code}: ${e.message}`);
        add('schema', 'skip', 'the store did not open');
        add('master keys', 'skip', 'the store did not open');
      }
    }
  }

  let info: StoreInfoOutput | undefined;
  let localNow = Date.now();
  let roundTrip = 0;
  let byProvider: Record<string, unknown> = {};
  if (authpipe) {
    const handle = await nativeHandle(authpipe);
    const before = Date.now();
    info = await handle.storeInfo();
    roundTrip = Date.now() - before;
    localNow = before + roundTrip / 2;
    byProvider = (await authpipe.health()).byProvider;
    add('store', 'ok', `${info.store} opens (${plural(info.tenants, 'tenant')}, ${plural(sum(byProvider), 'connection')})`);
    if (info.schemaVersion === info.expectedSchemaVersion) add('schema', 'ok', `version ${info.schemaVersion}, as this build expects`);
    else add('schema', 'fail', `version ${info.schemaVersion}; this build expects ${info.expectedSchemaVersion}`);
    checkKeys(info, add);
  }

  await checkProviders(providers, providersError, byProvider, authpipe !== undefined, add);

  if (info) checkClock(info, localNow, roundTrip, add);
  else add('clock', 'skip', 'the store did not open');

  const failed = checks.some((c) => c.status === 'fail');
  if (ctx.json) {
    ctx.out.json({ ok: !failed, checks });
    return failed ? EXIT_PROBLEMS : EXIT_OK;
  }
  const { colors } = ctx.out;
  const paint = { ok: colors.green, warn: colors.yellow, fail: colors.red, skip: colors.dim };
  const width = Math.max(...checks.map((c) => c.name.length));
  for (const c of checks) ctx.out.line(`${paint[c.status](c.status.padEnd(4))}  ${colors.bold(c.name.padEnd(width))}  ${c.detail}`);
  ctx.out.line();
  const count = (s: Status) => checks.filter((c) => c.status === s).length;
  ctx.out.line(failed ? colors.red(`${plural(count('fail'), 'check')} failed.`) : `All checks passed${count('warn') ? ` (${plural(count('warn'), 'warning')})` : ''}.`);
  return failed ? EXIT_PROBLEMS : EXIT_OK;
}

function asAuthpipeError(err: unknown): AuthpipeError {
  return err instanceof AuthpipeError ? err : new AuthpipeError('INTERNAL', err instanceof Error ? err.message : String(err));
}

/** What `read` threw, or nothing. */
function failure(read: () => unknown): AuthpipeError | undefined {
  try {
    read();
    return undefined;
  } catch (err) {
    return asAuthpipeError(err);
  }
}

function sum(byProvider: Record<string, unknown>): number {
  return Object.values(byProvider).reduce<number>((n, counts) => n + Object.values(counts as Record<string, number>).reduce((a, b) => a + b, 0), 0);
}

type Add = (name: string, status: Status, detail: string) => void;

function checkKeys(info: StoreInfoOutput, add: Add): void {
  const primary = info.masterKeys.find((k) => k.configured === 'primary')!;
  const total = info.masterKeys.reduce((n, k) => n + k.tenantKeys, 0);
  const others = info.masterKeys.filter((k) => k !== primary);
  const describe = (k: (typeof others)[number]) => {
    const state = k.retiredAt != null ? 'retired' : k.configured ? `configured ${k.configured}` : 'not configured here';
    return `'${k.id}' (${state}, wraps ${plural(k.tenantKeys, 'tenant key')})`;
  };
  const detail = `primary '${primary.id}' wraps ${primary.tenantKeys} of ${plural(total, 'tenant key')}${others.length ? `; also ${others.map(describe).join(', ')}` : ''}`;
  const behind = others.filter((k) => k.tenantKeys > 0).map((k) => `'${k.id}'`);
  if (behind.length > 0) add('master keys', 'warn', `${detail}: run 'authpipe rotate-key' to rewrap those of ${behind.join(', ')}`);
  else add('master keys', 'ok', detail);
}

async function checkProviders(
  providers: Record<string, ProviderConfig> | undefined,
  error: AuthpipeError | undefined,
  byProvider: Record<string, unknown>,
  opened: boolean,
  add: Add,
): Promise<void> {
  if (error) return add('providers', 'fail', `${error.code}: ${error.message}`);
  if (providers === undefined) return add('providers', 'skip', 'no --providers file given');
  const ids = Object.keys(providers);
  if (ids.length === 0) add('providers', 'warn', 'the providers file configures none');
  for (const id of ids) {
    // Each on its own, in a throwaway in-memory store, so one bad provider names itself.
    let probe: Authpipe | undefined;
    try {
      probe = new Authpipe({ store: ':memory:', masterKey: Buffer.alloc(32, 7), providers: { [id]: providers[id]! }, healthCheckIntervalMs: 0 });
      await probe.ready();
      const settings = providers[id]!;
      if (!settings.clientId || !settings.clientSecret) add(`provider ${id}`, 'warn', 'valid, but without clientId and clientSecret its connections cannot refresh');
      else add(`provider ${id}`, 'ok', 'valid');
    } catch (err) {
      const e = asAuthpipeError(err);
      add(`provider ${id}`, 'fail', `${e.code}: ${e.message}`);
    } finally {
      await probe?.close();
    }
  }
  if (!opened) return;
  const missing = Object.keys(byProvider)
    .filter((p) => !ids.includes(p))
    .sort();
  if (missing.length > 0) {
    const counts = missing.map((p) => `${p} (${sum({ [p]: byProvider[p] })})`).join(', ');
    add('providers', 'warn', `the store has connections of providers the file does not configure, which this configuration cannot refresh: ${counts}`);
  }
}

function checkClock(info: StoreInfoOutput, localNow: number, roundTrip: number, add: Add): void {
  if (info.serverNowMs != null) {
    const skew = localNow - info.serverNowMs;
    // The server read its clock somewhere within the round trip.
    const off = Math.max(0, Math.abs(skew) - roundTrip / 2);
    const direction = skew > 0 ? 'ahead of' : 'behind';
    const text = `${Math.abs(Math.round(skew))} ms ${direction} PostgreSQL's (round trip ${roundTrip} ms)`;
    if (off > CLOCK_FAIL_MS) return add('clock', 'fail', `${text}: fix this machine's time (NTP); leases between instances depend on it`);
    if (off > CLOCK_WARN_MS) return add('clock', 'warn', text);
    if (info.newestWriteMs == null || info.newestWriteMs - localNow <= CLOCK_FAIL_MS) return add('clock', 'ok', text);
  }
  if (info.newestWriteMs == null) return add('clock', 'ok', 'the store holds no write to compare with');
  const ahead = info.newestWriteMs - localNow;
  if (ahead > CLOCK_FAIL_MS) {
    return add('clock', 'fail', `the store holds a write from ${duration(ahead)} in this machine's future: this clock is behind, or a writer's was ahead`);
  }
  add('clock', 'ok', `the newest write in the store is ${ahead > 0 ? 'from now' : `${duration(-ahead)} old`}`);
}
