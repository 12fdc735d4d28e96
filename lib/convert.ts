/**
 * What crosses between the public API and the native handle, both ways: caller input checked
 * for its JS types (what values mean is the core's to say) and native output turned into the
 * frozen objects callers get. Errors from native calls become {@link AuthpipeError}s here.
 * @internal
 */
import * as args from './args';
import { fromNative, invalidArgument } from './errors';
import type { ConnectionOutput, CredentialOutput, EventOutput, HealthOutput } from './native';
import type { CallbackInput, Connection, ConnectionEventName, ConnectionRef, ConnectionStatus, Credential, CredentialType, HealthSummary } from './types';

const EMPTY_EXTRAS: Readonly<Record<string, unknown>> = Object.freeze({});

/** Runs a native call; its error, thrown or rejected, becomes an {@link AuthpipeError}. */
export async function call<T>(fn: () => T | Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw fromNative(err);
  }
}

const REF_FIELDS = ['provider', 'tenantId', 'userId'] as const;
const IMPORT_FIELDS = [...REF_FIELDS, 'accessToken', 'refreshToken', 'expiresAt', 'apiKey', 'scopes', 'extras'] as const;

/** Checks the three ids of a connection; `prefix` locates them inside a list (`[3].`). */
export function connectionRef(ref: unknown, prefix = ''): ConnectionRef {
  return refOf(args.fields(ref, refField(prefix), REF_FIELDS, prefix), prefix);
}

function refField(prefix: string): string {
  return prefix ? `connections${prefix.slice(0, -1)}` : 'connection';
}

function refOf(r: Record<(typeof REF_FIELDS)[number], unknown>, prefix: string): ConnectionRef {
  return {
    provider: args.string(r.provider, `${prefix}provider`),
    tenantId: args.string(r.tenantId, `${prefix}tenantId`),
    userId: args.string(r.userId, `${prefix}userId`),
  };
}

/** A secret's reference, and with `withValue` its value. */
export function secretRef(ref: unknown, withValue = false): { tenantId: string; provider: string | undefined; name: string; value?: string } {
  const r = args.fields(ref, 'secret', ['tenantId', 'provider', 'name', 'value']);
  return {
    tenantId: args.string(r.tenantId, 'tenantId'),
    provider: args.optionalString(r.provider, 'provider'),
    name: args.string(r.name, 'name'),
    ...(withValue ? { value: args.string(r.value, 'value') } : {}),
  };
}

export function importInput(input: unknown, prefix: string) {
  const i = args.fields(input, refField(prefix), IMPORT_FIELDS, prefix);
  const field = (name: string) => `${prefix}${name}`;
  return {
    ...refOf(i, prefix),
    accessToken: args.optionalString(i.accessToken, field('accessToken')),
    refreshToken: args.optionalString(i.refreshToken, field('refreshToken')),
    expiresAt: args.optionalTimestamp(i.expiresAt, field('expiresAt')),
    apiKey: args.optionalString(i.apiKey, field('apiKey')),
    scopes: args.optionalStrings(i.scopes, field('scopes')),
    extras: args.optionalJsonObject(i.extras, field('extras')),
  };
}

/** The parameters of a callback, from whichever form it arrived in. */
export function callbackParams(input: CallbackInput): Record<string, string> {
  const i = args.fields(input, 'callback', ['url', 'query', 'body']);
  const fromSearch = (value: unknown, field: string): Record<string, string> => {
    if (typeof value === 'string') return args.uniqueParams(new URLSearchParams(value.startsWith('?') ? value.slice(1) : value), field);
    if (args.guarded(() => value instanceof URLSearchParams, field)) return args.uniqueParams(value as URLSearchParams, field);
    return Object.fromEntries(args.entries(value, field).map(([k, v]) => [k, args.string(v, `${field}.${k}`)]));
  };
  let params: Record<string, string>;
  if (i.url !== undefined) {
    const url = args.string(i.url, 'url');
    let parsed: URL;
    try {
      parsed = new URL(url, 'http://callback.invalid');
    } catch {
      throw invalidArgument('url is not a valid URL');
    }
    params = args.uniqueParams(parsed.searchParams, 'url');
  } else if (i.query !== undefined) {
    params = fromSearch(i.query, 'query');
  } else if (i.body !== undefined) {
    params = fromSearch(i.body, 'body');
  } else {
    throw invalidArgument('handleCallback takes { url }, { query } or { body }');
  }
  for (const [k, v] of Object.entries(params)) {
    if (!v.isWellFormed() || !k.isWellFormed()) throw invalidArgument(`callback parameter ${k} is not well-formed Unicode`);
  }
  // No prototype: napi reads a record's keys as `for...in` does, inherited ones included, and a
  // polluted Object.prototype would add parameters.
  return Object.assign(Object.create(null) as Record<string, string>, params);
}

/** A native timestamp (ms), or null. */
function date(ms: number | undefined | null): Date | null {
  return ms === undefined || ms === null ? null : new Date(ms);
}

export function toCredential(out: CredentialOutput): Credential {
  return Object.freeze({
    credential: out.credential,
    type: out.type as CredentialType,
    expiresAt: date(out.expiresAt),
    extras: out.extras === undefined ? EMPTY_EXTRAS : Object.freeze(JSON.parse(out.extras) as Record<string, unknown>),
  });
}

export function toConnection(c: ConnectionOutput): Connection {
  const hasAccount = c.accountId !== undefined || c.accountName !== undefined;
  return Object.freeze({
    provider: c.provider,
    tenantId: c.tenantId,
    userId: c.userId,
    type: c.type as CredentialType,
    status: c.status as ConnectionStatus,
    scopes: Object.freeze([...c.scopes]),
    account: hasAccount ? Object.freeze({ id: c.accountId ?? null, name: c.accountName ?? null }) : null,
    hasRefreshToken: c.hasRefreshToken,
    expiresAt: date(c.expiresAt),
    createdAt: new Date(c.createdAt),
    updatedAt: new Date(c.updatedAt),
    lastRefreshAt: date(c.lastRefreshAt),
    nextRefreshAt: date(c.nextRefreshAt),
    lastCheckAt: date(c.lastCheckAt),
    lastError: c.lastErrorCode === undefined ? null : Object.freeze({ code: c.lastErrorCode, message: c.lastErrorMessage ?? '' }),
  });
}

/** The health summary, its keys in order (napi builds the objects from unordered maps). */
export function toHealth(h: HealthOutput): HealthSummary {
  const sorted = <T>(o: Record<string, T>, each: (v: T) => T = (v) => v) =>
    Object.freeze(Object.fromEntries(Object.keys(o).sort().map((k) => [k, each(o[k]!)])));
  return Object.freeze({ total: h.total, byStatus: sorted(h.byStatus), byProvider: sorted(h.byProvider, (counts) => sorted(counts)) }) as HealthSummary;
}

export function toEvent(e: EventOutput) {
  return Object.freeze({
    type: e.type as ConnectionEventName,
    provider: e.provider,
    tenantId: e.tenantId,
    userId: e.userId,
    at: new Date(e.at),
    status: (e.status ?? null) as ConnectionStatus | null,
    expiresAt: date(e.expiresAt),
    error: e.errorCode === undefined ? null : Object.freeze({ code: e.errorCode, message: e.errorMessage ?? '' }),
    ...(e.attempt === undefined ? {} : { attempt: e.attempt, nextRetryAt: new Date(e.nextRetryAt ?? e.at) }),
  });
}
