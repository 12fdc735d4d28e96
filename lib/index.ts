/**
 * @authpipe/node: your customers' CRM credentials, served from an in-process encrypted cache.
 *
 * @example
 * import { Authpipe } from '@authpipe/node';
 *
 * const authpipe = new Authpipe({ masterKey: process.env.AUTHPIPE_MASTER_KEY });
 * const { credential } = await authpipe.getCredential({ provider: 'attio', tenantId: 'org_acme', userId: 'user_123' });
 */
import * as args from './args';
import { AuthpipeError, fromNative, invalidArgument } from './errors';
import { CredentialMemo } from './memo';
import { native, type ConnectionOutput, type CredentialOutput, type NativeAuthpipe } from './native';
import type {
  AuthpipeOptions,
  AuthpipeStats,
  Connection,
  ConnectionPage,
  ConnectionRef,
  Credential,
  CredentialType,
  ConnectionStatus,
  ImportConnectionInput,
  ListConnectionsQuery,
  MasterKeyRotation,
  SecretRef,
  TenantDeletion,
} from './types';

export { AuthpipeError, ERROR_CODES, type AuthpipeErrorCode } from './errors';
export type * from './types';

const DEFAULT_MEMO_LIMIT = 100_000;
const EMPTY_EXTRAS: Readonly<Record<string, unknown>> = Object.freeze({});
const warnedDevKeys = new Set<string>();

/**
 * One handle on the credential vault. Instances that open the same store in one process
 * (worker threads included) share one native engine and cache; each keeps its own memo.
 *
 * Construction is synchronous and never throws for I/O: the store opens in the background,
 * every method waits for it, and {@link Authpipe.ready} reports how it went.
 */
export class Authpipe {
  #native: NativeAuthpipe | undefined;
  #memo: CredentialMemo | undefined;
  readonly #opening: Promise<NativeAuthpipe>;
  #closed = false;

  /**
   * @throws {AuthpipeError} `INVALID_ARGUMENT` naming the bad option.
   * @example
   * const authpipe = new Authpipe({ store: './data/authpipe.db', masterKey: process.env.AUTHPIPE_MASTER_KEY });
   */
  constructor(options: AuthpipeOptions = {}) {
    const opts = args.object(options, 'options');
    const store = args.optionalString(opts.store, 'store');
    const masterKeys = resolveMasterKeys(opts);
    const providers = opts.providers === undefined ? {} : args.object(opts.providers, 'providers');
    for (const [id, config] of Object.entries(providers)) args.object(config, `providers.${id}`);
    const memoLimit = args.optionalInteger(opts.memoLimit, 'memoLimit') ?? DEFAULT_MEMO_LIMIT;
    if (memoLimit < 0) throw invalidArgument('memoLimit must not be negative');

    const openInput = { store, masterKeys, production: process.env.NODE_ENV === 'production', providers: Object.keys(providers) };
    try {
      native.checkOptions(openInput);
    } catch (err) {
      throw fromNative(err);
    }
    this.#opening = native
      .open(openInput)
      .then(
        (handle) => {
          if (this.#closed) handle.close();
          this.#native = handle;
          this.#memo = memoLimit > 0 ? new CredentialMemo(handle, memoLimit) : undefined;
          announceDevKey(handle);
          return handle;
        },
        (err: unknown) => {
          throw fromNative(err);
        },
      );
    // Callers see the failure through ready() and every method; it is not an unhandled rejection.
    this.#opening.catch(() => {});
  }

  /**
   * Resolves once the store is open; rejects with the reason it could not open
   * (e.g. `VAULT_KEY_MISMATCH` when `masterKey` is not the key the store was written with).
   */
  async ready(): Promise<void> {
    await this.#handle();
  }

  /**
   * A valid credential for a connection. On a warm cache this does no I/O and does not call
   * into Rust: it is served from this instance's memo, validated against a generation counter
   * that the engine bumps whenever the connection changes.
   *
   * @throws {AuthpipeError} `CONNECTION_NOT_FOUND`, `CONNECTION_REVOKED`, `CONNECTION_EXPIRED`,
   *   `UNKNOWN_PROVIDER`, `INVALID_ARGUMENT`.
   * @example
   * const { credential, extras } = await authpipe.getCredential({ provider: 'attio', tenantId: 'org_acme', userId: 'user_123' });
   * await fetch('https://api.attio.com/v2/self', { headers: { authorization: `Bearer ${credential}` } });
   */
  getCredential(ref: ConnectionRef): Promise<Credential> {
    return this.#memo?.get(ref?.provider, ref?.tenantId, ref?.userId) ?? this.#getCredentialSlow(ref);
  }

  async #getCredentialSlow(ref: ConnectionRef): Promise<Credential> {
    const { provider, tenantId, userId } = connectionRef(ref);
    const handle = await this.#handle();
    try {
      const out = handle.cachedCredential(provider, tenantId, userId) ?? (await handle.credential(provider, tenantId, userId));
      const credential = toCredential(out);
      this.#memo?.set(provider, tenantId, userId, credential, out.slot, out.generation);
      return credential;
    } catch (err) {
      throw fromNative(err);
    }
  }

  /**
   * Stores a connection made elsewhere: an OAuth token set (migrating from another tool) or an
   * API key. Replaces an existing connection with the same (provider, tenantId, userId).
   * @example
   * await authpipe.importConnection({ provider: 'attio', tenantId: 'org_acme', userId: 'user_123', accessToken });
   * await authpipe.importConnection({ provider: 'close', tenantId: 'org_acme', userId: 'user_123', apiKey });
   */
  async importConnection(input: ImportConnectionInput): Promise<Connection> {
    const [connection] = await this.importConnections([input]);
    return connection!;
  }

  /** Imports many connections in one transaction: all are stored, or none. */
  async importConnections(inputs: readonly ImportConnectionInput[]): Promise<Connection[]> {
    if (!Array.isArray(inputs)) throw invalidArgument('importConnections takes an array of connections');
    const checked = inputs.map((input, i) => importInput(input, inputs.length === 1 ? '' : `[${i}].`));
    const handle = await this.#handle();
    const stored = await call(() => handle.importConnections(checked));
    for (const c of stored) this.#memo?.delete(c.provider, c.tenantId, c.userId);
    return stored.map(toConnection);
  }

  /**
   * A connection's metadata (status, scopes, timestamps, provider account). Never a secret.
   * @throws {AuthpipeError} `CONNECTION_NOT_FOUND`.
   */
  async getConnection(ref: ConnectionRef): Promise<Connection> {
    const { provider, tenantId, userId } = connectionRef(ref);
    const handle = await this.#handle();
    return toConnection(await call(() => handle.connection(provider, tenantId, userId)));
  }

  /**
   * A page of connections in (tenantId, provider, userId) order.
   * @example
   * for (let cursor: string | null | undefined; cursor !== null; ) {
   *   const page = await authpipe.listConnections({ tenantId: 'org_acme', cursor });
   *   page.connections.forEach(show);
   *   cursor = page.nextCursor;
   * }
   */
  async listConnections(query: ListConnectionsQuery = {}): Promise<ConnectionPage> {
    const q = args.object(query, 'query');
    const input = {
      tenantId: args.optionalString(q.tenantId, 'tenantId'),
      provider: args.optionalString(q.provider, 'provider'),
      status: args.optionalString(q.status, 'status'),
      limit: args.optionalInteger(q.limit, 'limit'),
      cursor: args.optionalString(q.cursor, 'cursor'),
    };
    if (input.limit !== undefined && (input.limit < 1 || input.limit > 1000)) throw invalidArgument('limit must be between 1 and 1000');
    const handle = await this.#handle();
    const page = await call(() => handle.listConnections(input));
    return Object.freeze({ connections: Object.freeze(page.connections.map(toConnection)), nextCursor: page.nextCursor ?? null });
  }

  /** Deletes a connection. Resolves `true` if it existed. */
  async deleteConnection(ref: ConnectionRef): Promise<boolean> {
    const { provider, tenantId, userId } = connectionRef(ref);
    const handle = await this.#handle();
    this.#memo?.delete(provider, tenantId, userId);
    return call(() => handle.deleteConnection(provider, tenantId, userId));
  }

  /**
   * Keeps a secret (an API key, a webhook signing secret) in the vault, encrypted with the
   * tenant's key. Replaces an existing secret of the same name.
   * @example
   * await authpipe.setSecret({ tenantId: 'org_acme', provider: 'attio', name: 'webhook', value: signingSecret });
   */
  async setSecret(ref: SecretRef & { value: string }): Promise<void> {
    const { tenantId, provider, name } = secretRef(ref);
    const value = args.string(ref.value, 'value');
    const handle = await this.#handle();
    await call(() => handle.setSecret(tenantId, provider, name, value));
  }

  /**
   * A secret stored with {@link Authpipe.setSecret}.
   * @throws {AuthpipeError} `SECRET_NOT_FOUND`.
   */
  async getSecret(ref: SecretRef): Promise<string> {
    const { tenantId, provider, name } = secretRef(ref);
    const handle = await this.#handle();
    return call(() => handle.getSecret(tenantId, provider, name));
  }

  /** Deletes a secret. Resolves `true` if it existed. */
  async deleteSecret(ref: SecretRef): Promise<boolean> {
    const { tenantId, provider, name } = secretRef(ref);
    const handle = await this.#handle();
    return call(() => handle.deleteSecret(tenantId, provider, name));
  }

  /**
   * Rewraps every tenant key with the primary (first) master key, online. Data is not
   * re-encrypted: tenant data keys stay the same, only their wrapping changes.
   */
  async rotateMasterKey(): Promise<MasterKeyRotation> {
    const handle = await this.#handle();
    return Object.freeze(await call(() => handle.rotateMasterKey()));
  }

  /**
   * Retires a master key once no tenant key uses it (after {@link Authpipe.rotateMasterKey}).
   * It can then be removed from `masterKeys`; configuring it again is refused.
   * @throws {AuthpipeError} `KEY_IN_USE` while tenant keys are still wrapped with it.
   */
  async retireMasterKey(id: string): Promise<void> {
    const keyId = args.string(id, 'id');
    const handle = await this.#handle();
    await call(() => handle.retireMasterKey(keyId));
  }

  /**
   * Crypto-shreds a tenant: destroys its data key and deletes its connections and secrets.
   * Copies of its rows (backups included) can no longer be decrypted, even with the master key.
   */
  async deleteTenant(tenantId: string): Promise<TenantDeletion> {
    const id = args.string(tenantId, 'tenantId');
    const handle = await this.#handle();
    const deleted = await call(() => handle.deleteTenant(id));
    this.#memo?.clear();
    return Object.freeze(deleted);
  }

  /** Diagnostics of the native engine behind this instance. */
  async stats(): Promise<AuthpipeStats> {
    const handle = await this.#handle();
    return Object.freeze(await call(() => handle.stats()));
  }

  /**
   * Releases this instance. The engine (store, cache, background work) closes with the last
   * instance on its store; the process can then exit on its own.
   */
  async close(): Promise<void> {
    this.#closed = true;
    this.#memo?.clear();
    this.#memo = undefined;
    this.#native?.close();
    await this.#opening.catch(() => {});
  }

  async #handle(): Promise<NativeAuthpipe> {
    if (this.#closed) throw new AuthpipeError('CLOSED', 'this Authpipe instance was closed');
    return this.#native ?? this.#opening;
  }
}

async function call<T>(fn: () => T | Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw fromNative(err);
  }
}

function resolveMasterKeys(opts: Record<string, unknown>): Array<{ id?: string; key: string }> | undefined {
  if (opts.masterKey !== undefined && opts.masterKeys !== undefined) {
    throw invalidArgument('pass masterKey or masterKeys, not both');
  }
  if (opts.masterKeys !== undefined) {
    if (!Array.isArray(opts.masterKeys)) throw invalidArgument('masterKeys must be an array of { id, key }');
    return opts.masterKeys.map((entry: unknown, i) => {
      const e = args.object(entry, `masterKeys[${i}]`);
      return { id: args.string(e.id, `masterKeys[${i}].id`), key: args.keyMaterial(e.key, `masterKeys[${i}].key`) };
    });
  }
  if (opts.masterKey !== undefined) return [{ key: args.keyMaterial(opts.masterKey, 'masterKey') }];
  const fromEnv = process.env.AUTHPIPE_MASTER_KEY;
  if (fromEnv) return [{ key: fromEnv }];
  return undefined;
}

function announceDevKey(handle: NativeAuthpipe): void {
  const devKey = handle.devKey();
  if (devKey?.path === undefined || warnedDevKeys.has(devKey.path)) return;
  warnedDevKeys.add(devKey.path);
  process.emitWarning(
    `no masterKey configured: ${devKey.created ? 'generated' : 'using'} a development master key in ${devKey.path}. ` +
      'Set masterKey or AUTHPIPE_MASTER_KEY before production (keep that file safe: without it the store cannot be read).',
    { code: 'AUTHPIPE_DEV_KEY' },
  );
}

/** Checks the three ids of a connection; `prefix` locates them inside a list (`[3].`). */
function connectionRef(ref: unknown, prefix = ''): ConnectionRef {
  const r = args.object(ref, prefix ? `connections${prefix.slice(0, -1)}` : 'connection');
  return {
    provider: args.string(r.provider, `${prefix}provider`),
    tenantId: args.string(r.tenantId, `${prefix}tenantId`),
    userId: args.string(r.userId, `${prefix}userId`),
  };
}

function secretRef(ref: unknown): { tenantId: string; provider: string | undefined; name: string } {
  const r = args.object(ref, 'secret');
  return {
    tenantId: args.string(r.tenantId, 'tenantId'),
    provider: args.optionalString(r.provider, 'provider'),
    name: args.string(r.name, 'name'),
  };
}

function importInput(input: unknown, prefix: string) {
  const ref = connectionRef(input, prefix);
  const i = input as Record<string, unknown>;
  const field = (name: string) => `${prefix}${name}`;
  return {
    ...ref,
    accessToken: args.optionalString(i.accessToken, field('accessToken')),
    refreshToken: args.optionalString(i.refreshToken, field('refreshToken')),
    expiresAt: args.optionalTimestamp(i.expiresAt, field('expiresAt')),
    apiKey: args.optionalString(i.apiKey, field('apiKey')),
    scopes: args.optionalStrings(i.scopes, field('scopes')),
    extras: args.optionalJsonObject(i.extras, field('extras')),
  };
}

function date(ms: number | undefined | null): Date | null {
  return ms === undefined || ms === null ? null : new Date(ms);
}

function toCredential(out: CredentialOutput): Credential {
  return Object.freeze({
    credential: out.credential,
    type: out.type as CredentialType,
    expiresAt: date(out.expiresAt),
    extras: out.extras === undefined ? EMPTY_EXTRAS : Object.freeze(JSON.parse(out.extras) as Record<string, unknown>),
  });
}

function toConnection(c: ConnectionOutput): Connection {
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
