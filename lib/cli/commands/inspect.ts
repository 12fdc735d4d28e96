/**
 * The read-only commands: `status` (counts by provider and status), `list` (a filtered, paged
 * listing) and `show` (one connection's metadata). None prints a secret: they read only
 * connection metadata, which holds none.
 * @internal
 */
import { CONNECTION_STATUSES } from '../../generated';
import type { Connection, ConnectionStatus, ListConnectionsQuery } from '../../types';
import { EXIT_OK, EXIT_PROBLEMS, integerFlag, stringFlag, usageError, type CommandSpec, type FlagSpec, type Parsed } from '../args';
import type { Context } from '../context';
import { expiry, plural, printable, relative, when } from '../output';

export const FILTER_FLAGS: Readonly<Record<string, FlagSpec>> = {
  tenant: { type: 'string', value: 'id', description: "Only this tenant's connections" },
  provider: { type: 'string', value: 'id', description: 'Only connections to this provider' },
  status: { type: 'string', value: 'status', description: `Only connections in this status: ${CONNECTION_STATUSES.join(', ')}` },
};

export const statusCommand: CommandSpec = {
  name: 'status',
  summary: 'Connection counts by provider and status',
  description: 'Counts the connections in the store by provider and by status.',
  positionals: [],
  flags: {},
  examples: ['authpipe status --store ./.authpipe/authpipe.db', 'authpipe status --json | jq .byStatus'],
  problems: 'some connection is not active (degraded, expired, revoked or insufficient_scope).',
};

export async function status(ctx: Context): Promise<number> {
  const authpipe = await ctx.open();
  const [health, stats] = await Promise.all([authpipe.health(), authpipe.stats()]);
  const healthy = (health.byStatus.active ?? 0) === health.total;
  if (ctx.json) {
    ctx.out.json({ store: stats.store, total: health.total, byStatus: health.byStatus, byProvider: health.byProvider, healthy });
    return healthy ? EXIT_OK : EXIT_PROBLEMS;
  }
  const { out } = ctx;
  out.fields([['Store', stats.store]]);
  if (health.total === 0) {
    out.line('No connections.');
    return EXIT_OK;
  }
  const counts = CONNECTION_STATUSES.filter((s) => health.byStatus[s]).map((s) => `${health.byStatus[s]} ${out.status(s)}`);
  out.line(`${plural(health.total, 'connection')}: ${counts.join(', ')}`);
  out.line();
  const cell = (n: number | undefined) => (n ? String(n) : out.colors.dim('0'));
  const rows = Object.entries(health.byProvider)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([provider, byStatus]) => [
      provider,
      ...CONNECTION_STATUSES.map((s) => cell(byStatus[s])),
      String(Object.values(byStatus).reduce((sum, n) => sum + (n ?? 0), 0)),
    ]);
  const columns = [{ header: 'PROVIDER' }, ...CONNECTION_STATUSES.map((s) => ({ header: s.toUpperCase(), align: 'right' as const })), { header: 'TOTAL', align: 'right' as const }];
  out.table(columns, rows);
  return healthy ? EXIT_OK : EXIT_PROBLEMS;
}

export const listCommand: CommandSpec = {
  name: 'list',
  summary: 'List connections (filter by tenant, provider, status)',
  description: [
    'Lists connections in (tenant, provider, user) order, at most --limit of them; --all lists every one.',
    'When more remain, the cursor to go on from is printed on stderr (and as nextCursor with --json).',
    'With --json: one document, {"connections": [...], "nextCursor": string|null}, one connection per line inside it.',
  ].join('\n'),
  positionals: [],
  flags: {
    ...FILTER_FLAGS,
    limit: { type: 'string', value: 'n', description: 'Most connections to list (default 100)' },
    all: { type: 'boolean', description: 'List every connection that matches' },
    cursor: { type: 'string', value: 'cursor', description: 'Go on from where a listing stopped (its nextCursor)' },
  },
  examples: ['authpipe list --tenant org_acme', 'authpipe list --provider attio --status revoked --all --json'],
};

/** The filter flags as a listConnections query. */
export function filterQuery(ctx: Context): ListConnectionsQuery {
  const status = stringFlag(ctx.args, 'status');
  if (status !== undefined && !(CONNECTION_STATUSES as readonly string[]).includes(status)) {
    throw usageError(`--status must be one of ${CONNECTION_STATUSES.join(', ')}`, ctx.command);
  }
  return { tenantId: stringFlag(ctx.args, 'tenant'), provider: stringFlag(ctx.args, 'provider'), status: status as ConnectionStatus | undefined };
}

export function hasFilter(query: ListConnectionsQuery): boolean {
  return query.tenantId !== undefined || query.provider !== undefined || query.status !== undefined;
}

const MAX_PAGE = 1000;

/** Pages through the connections that match, `limit` at most; `onPage` sees each page. */
export async function pages(
  authpipe: { listConnections(q: ListConnectionsQuery): Promise<{ connections: readonly Connection[]; nextCursor: string | null }> },
  query: ListConnectionsQuery,
  limit: number,
  onPage: (connections: readonly Connection[]) => void,
): Promise<string | null> {
  let cursor = query.cursor;
  let remaining = limit;
  for (;;) {
    // A page never goes past the limit, so its cursor is where the next listing starts.
    const page = await authpipe.listConnections({ ...query, cursor, limit: Math.min(remaining, MAX_PAGE) });
    onPage(page.connections);
    remaining -= page.connections.length;
    if (page.nextCursor === null || remaining <= 0) return page.nextCursor;
    cursor = page.nextCursor;
  }
}

export async function list(ctx: Context): Promise<number> {
  const all = ctx.args.values.all === true;
  if (all && stringFlag(ctx.args, 'limit') !== undefined) throw usageError('pass --limit or --all, not both', ctx.command);
  const limit = all ? Number.MAX_SAFE_INTEGER : integerFlag(ctx.args, 'limit', ctx.command, 100, 1, 1_000_000);
  const query = { ...filterQuery(ctx), cursor: stringFlag(ctx.args, 'cursor') };
  const authpipe = await ctx.open();
  if (ctx.json) {
    // Streamed, so that --all on a large store holds one page at a time.
    let first = true;
    ctx.out.stream.write('{"connections": [');
    const next = await pages(authpipe, query, limit, (connections) => {
      for (const c of connections) {
        ctx.out.stream.write(`${first ? '\n' : ',\n'}  ${JSON.stringify(c)}`);
        first = false;
      }
    });
    ctx.out.stream.write(`${first ? '' : '\n'}], "nextCursor": ${JSON.stringify(next)}}\n`);
    return EXIT_OK;
  }
  const rows: string[][] = [];
  const next = await pages(authpipe, query, limit, (connections) => {
    for (const c of connections) rows.push(connectionRow(ctx, c));
  });
  if (rows.length === 0) ctx.out.line('No connections match.');
  else ctx.out.table(CONNECTION_COLUMNS, rows);
  if (next !== null) ctx.err.line(ctx.err.colors.dim(`More connections: add --cursor ${next} (or list them all with --all)`));
  return EXIT_OK;
}

export const CONNECTION_COLUMNS = [{ header: 'TENANT' }, { header: 'PROVIDER' }, { header: 'USER' }, { header: 'TYPE' }, { header: 'STATUS' }, { header: 'EXPIRES' }, { header: 'LAST ERROR' }];

export function connectionRow(ctx: Context, c: Connection): string[] {
  return [c.tenantId, c.provider, c.userId, c.type, ctx.out.status(c.status), expiry(c), c.lastError ? printable(c.lastError.code) : '-'];
}

export const showCommand: CommandSpec = {
  name: 'show',
  summary: "One connection's metadata (never its secret)",
  description: "Shows a connection's metadata: type, status, scopes, account, timestamps and last error. Never a token or key.",
  positionals: [{ name: 'provider' }, { name: 'tenant' }, { name: 'user' }],
  flags: {},
  examples: ['authpipe show attio org_acme user_123', 'authpipe show attio org_acme user_123 --json'],
};

export async function show(ctx: Context, parsed: Parsed): Promise<number> {
  const [provider, tenantId, userId] = parsed.positionals as [string, string, string];
  const authpipe = await ctx.open();
  const c = await authpipe.getConnection({ provider, tenantId, userId });
  if (ctx.json) {
    ctx.out.json(c);
    return EXIT_OK;
  }
  const account = c.account ? [c.account.id, c.account.name && `(${c.account.name})`].filter(Boolean).join(' ') : '-';
  ctx.out.fields([
    ['Provider', c.provider],
    ['Tenant', c.tenantId],
    ['User', c.userId],
    ['Type', c.type],
    ['Status', ctx.out.status(c.status)],
    ['Scopes', c.scopes.length > 0 ? printable(c.scopes.join(' ')) : '-'],
    ['Account', printable(account)],
    ['Refresh token', c.type === 'api_key' ? '-' : c.hasRefreshToken ? 'yes' : 'no'],
    ['Expires', c.type === 'api_key' || c.expiresAt === null ? 'never' : when(c.expiresAt)],
    ['Created', when(c.createdAt)],
    ['Updated', when(c.updatedAt)],
    ['Last refresh', when(c.lastRefreshAt)],
    ['Next refresh', when(c.nextRefreshAt)],
    ['Last check', c.lastCheckAt ? `${c.lastCheckAt.toISOString()} (${relative(c.lastCheckAt)})` : '-'],
    ['Last error', c.lastError ? printable(`${c.lastError.code}: ${c.lastError.message}`) : '-'],
  ]);
  return EXIT_OK;
}
