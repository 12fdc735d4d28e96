/**
 * `check` (a health probe with the provider's identity endpoint) and `refresh` (a token refresh
 * now), for one connection or every connection a filter matches, a few at a time, with a
 * progress bar on a terminal. A failure to probe or refresh one connection (no settings for its
 * provider, say) is reported with it, and the others go on.
 * @internal
 */
import type { Authpipe } from '../../index';
import { AuthpipeError } from '../../errors';
import type { Connection, ConnectionRef, ProviderConfig } from '../../types';
import { EXIT_FAILED, EXIT_OK, EXIT_PROBLEMS, integerFlag, usageError, type CommandSpec, type Parsed } from '../args';
import type { Context } from '../context';
import { plural, printable, Progress } from '../output';
import { FILTER_FLAGS, filterQuery, hasFilter, pages } from './inspect';

const TARGET_FLAGS = {
  ...FILTER_FLAGS,
  all: { type: 'boolean', description: 'Every connection in the store' },
  concurrency: { type: 'string', value: 'n', description: 'Connections worked on at once (default 4, at most 64)' },
} as const;

const TARGETS = [
  'Names one connection (<provider> <tenant> <user>), or every connection that --tenant, --provider and --status match, or --all.',
  'In bulk, the table lists the connections that are not active afterwards (or failed), then a summary; --json has every one.',
].join('\n');

export const checkCommand: CommandSpec = {
  name: 'check',
  summary: "Probe connections' health with their provider now",
  description: `Probes connections with their provider's identity endpoint (Attio /v2/self, ...): a dead token makes a connection revoked, a lost required scope insufficient_scope, a provider error degraded.\n${TARGETS}`,
  positionals: [{ name: 'provider', optional: true }, { name: 'tenant', optional: true }, { name: 'user', optional: true }],
  flags: TARGET_FLAGS,
  examples: ['authpipe check attio org_acme user_123', 'authpipe check --provider attio --providers providers.json', 'authpipe check --all --json'],
  problems: 'some connection is not active afterwards. A connection that could not be checked at all makes it 2.',
};

export const refreshCommand: CommandSpec = {
  name: 'refresh',
  summary: 'Refresh OAuth tokens now',
  description: `Refreshes connections' tokens now, whether or not they are due (joining a refresh already under way). Needs the providers' client credentials (--providers). API-key connections, and those without a refresh token, are skipped.\n${TARGETS}`,
  positionals: checkCommand.positionals,
  flags: TARGET_FLAGS,
  examples: ['authpipe refresh hubspot org_acme user_123 --providers providers.json', 'authpipe refresh --status degraded --providers providers.json'],
  problems: 'some connection is not active afterwards (revoked, degraded). A connection that could not be refreshed at all makes it 2.',
};

type Outcome = 'ok' | 'problem' | 'skipped' | 'error';

interface Result {
  provider: string;
  tenantId: string;
  userId: string;
  outcome: Outcome;
  /** Status before and after; `null` when the connection could not be read. */
  before: string | null;
  status: string | null;
  /** What happened, for people: `refreshed`, `api key: nothing to refresh`, an error. */
  detail: string;
  error: { code: string; message: string } | null;
  connection: Connection | null;
}

type Work = (authpipe: Authpipe, before: Connection, providers: Record<string, ProviderConfig> | undefined) => Promise<Result>;

const checkOne: Work = async (authpipe, before) => {
  const after = await authpipe.checkConnection(before);
  return result(before, after, after.status === 'active' ? 'ok' : 'problem', after.lastError ? `${after.lastError.code}: ${after.lastError.message}` : 'healthy');
};

const refreshOne: Work = async (authpipe, before, providers) => {
  if (before.type === 'api_key') return result(before, before, 'skipped', 'API key: nothing to refresh');
  if (!before.hasRefreshToken) return result(before, before, 'skipped', 'no refresh token');
  const settings = providers?.[before.provider];
  if (!settings?.clientId) {
    throw new AuthpipeError('INVALID_ARGUMENT', `the providers file has no clientId for '${before.provider}': a refresh needs the app's client credentials`);
  }
  const after = await authpipe.refreshConnection(before);
  if (after.status !== 'active') return result(before, after, 'problem', after.lastError ? `${after.lastError.code}: ${after.lastError.message}` : after.status);
  const refreshed = after.lastRefreshAt !== null && (before.lastRefreshAt === null || after.lastRefreshAt > before.lastRefreshAt);
  return refreshed ? result(before, after, 'ok', 'refreshed') : result(before, after, 'error', 'not refreshed', { code: 'INTERNAL', message: 'the refresh did not happen' });
};

function result(before: Connection, after: Connection, outcome: Outcome, detail: string, error: Result['error'] = null): Result {
  return { provider: before.provider, tenantId: before.tenantId, userId: before.userId, outcome, before: before.status, status: after.status, detail, error, connection: after };
}

function failure(ref: ConnectionRef, before: Connection | null, err: unknown): Result {
  const code = err instanceof AuthpipeError ? err.code : 'INTERNAL';
  const message = err instanceof Error ? err.message : String(err);
  return { ...pickRef(ref), outcome: 'error', before: before?.status ?? null, status: before?.status ?? null, detail: `${code}: ${message}`, error: { code, message }, connection: before };
}

function pickRef(ref: ConnectionRef): ConnectionRef {
  return { provider: ref.provider, tenantId: ref.tenantId, userId: ref.userId };
}

export function check(ctx: Context, parsed: Parsed): Promise<number> {
  return run(ctx, parsed, 'Checking', checkOne);
}

export function refresh(ctx: Context, parsed: Parsed): Promise<number> {
  if (ctx.providers() === undefined) {
    throw usageError("refresh needs the providers' client credentials: pass --providers <file> (or set AUTHPIPE_PROVIDERS)", ctx.command);
  }
  return run(ctx, parsed, 'Refreshing', refreshOne);
}

async function run(ctx: Context, parsed: Parsed, verb: string, work: Work): Promise<number> {
  const query = filterQuery(ctx);
  const all = parsed.values.all === true;
  const single = parsed.positionals.length > 0;
  if (single && parsed.positionals.length !== 3) throw usageError(`${ctx.command} takes <provider> <tenant> <user>, or filter flags`, ctx.command);
  if (single && (hasFilter(query) || all)) throw usageError('name one connection, or pass filter flags or --all, not both', ctx.command);
  if (!single && !hasFilter(query) && !all) {
    throw usageError(`${ctx.command} which connections? Name one (<provider> <tenant> <user>), filter (--tenant, --provider, --status), or pass --all`, ctx.command);
  }
  const concurrency = integerFlag(parsed, 'concurrency', ctx.command, 4, 1, 64);
  const providers = ctx.providers();
  const authpipe = await ctx.open({ providers });

  let targets: Connection[];
  if (single) {
    const [provider, tenantId, userId] = parsed.positionals as [string, string, string];
    targets = [await authpipe.getConnection({ provider, tenantId, userId })];
  } else {
    targets = [];
    await pages(authpipe, query, Number.MAX_SAFE_INTEGER, (connections) => targets.push(...connections));
  }

  const progress = single ? undefined : new Progress(verb, targets.length);
  const results: Result[] = new Array(targets.length);
  let nextIndex = 0;
  const worker = async () => {
    while (nextIndex < targets.length && !ctx.interrupt.signal.aborted) {
      const i = nextIndex++;
      const before = targets[i]!;
      try {
        results[i] = await work(authpipe, before, providers);
      } catch (err) {
        results[i] = failure(before, before, err);
      }
      progress?.advance();
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, targets.length) }, worker));
  progress?.finish();
  const done = results.filter((r): r is Result => r !== undefined);

  if (single && done[0]?.outcome === 'error') throw new AuthpipeError(done[0].error!.code as AuthpipeError['code'], done[0].error!.message);
  const count = (outcome: Outcome) => done.filter((r) => r.outcome === outcome).length;
  const code = count('error') > 0 ? EXIT_FAILED : count('problem') > 0 ? EXIT_PROBLEMS : EXIT_OK;
  const summary = { total: targets.length, done: done.length, ok: count('ok'), problems: count('problem'), skipped: count('skipped'), errors: count('error'), interrupted: done.length < targets.length };

  if (ctx.json) {
    ctx.out.json({ ...summary, results: done });
    return code;
  }
  const shown = single ? done : done.filter((r) => r.outcome === 'problem' || r.outcome === 'error');
  if (shown.length > 0) {
    const rows = shown.map((r) => [
      r.tenantId,
      r.provider,
      r.userId,
      r.before !== null && r.before !== r.status ? `${r.before} -> ${ctx.out.status(r.status ?? '-')}` : ctx.out.status(r.status ?? '-'),
      printable(r.detail),
    ]);
    ctx.out.table([{ header: 'TENANT' }, { header: 'PROVIDER' }, { header: 'USER' }, { header: 'STATUS' }, { header: 'RESULT' }], rows);
  }
  if (!single || shown.length === 0) {
    const parts = [`${summary.ok} ${ctx.command === 'refresh' ? 'refreshed' : 'healthy'}`];
    if (summary.problems) parts.push(ctx.out.colors.red(`${summary.problems} not active`));
    if (summary.errors) parts.push(ctx.out.colors.red(`${summary.errors} failed`));
    if (summary.skipped) parts.push(`${summary.skipped} skipped`);
    const stopped = summary.interrupted ? ` (interrupted: ${targets.length - done.length} not done)` : '';
    if (shown.length > 0) ctx.out.line();
    ctx.out.line(`${ctx.command === 'refresh' ? 'Refreshed' : 'Checked'} ${plural(done.length, 'connection')}: ${parts.join(', ')}${stopped}`);
  }
  return code;
}
