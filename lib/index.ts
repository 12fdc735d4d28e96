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
import { AuthpipeError, fromNative } from './errors';
import { createFetchHandler } from './handler/fetch';
import { createNodeHandler } from './handler/node';
import type { HandlerBackend, HandlerOptions } from './handler/routes';
import { call, callbackParams, connectionRef, importInput, secretRef, toConnection, toCredential, toEvent, toHealth } from './convert';
import { internals } from './internal';
import { CredentialMemo } from './memo';
import { EventEmitter } from 'node:events';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { native, type EventOutput, type NativeAuthpipe } from './native';
import { parseOptions } from './options';
import { attachTelemetry, prometheusText } from './telemetry/attach';
import { memoHitTally, type MemoHitTally } from './telemetry/memo-hits';
import type {
  AuthpipeEvents,
  AuthpipeOptions,
  HealthSummary,
  CallbackInput,
  CallbackOptions,
  ConnectSession,
  DeleteConnectionResult,
  StartConnectInput,
  StartedConnect,
  AuthpipeStats,
  Connection,
  ConnectionPage,
  ConnectionRef,
  Credential,
  ImportConnectionInput,
  ListConnectionsQuery,
  MasterKeyRotation,
  TenantKeyRotation,
  SecretRef,
  TenantDeletion,
  VerifyWebhookInput,
  WebhookVerification,
} from './types';
import { webhookInput } from './webhook';
export { isWebhookRejection } from './webhook';

export { AuthpipeError, ERROR_CODES, type AuthpipeErrorCode } from './errors';
export { PROMETHEUS_CONTENT_TYPE } from './telemetry/content-type';
export type { ConnectedConnection, ConnectResultMessage } from './handler/pages';
export type { HandlerOptions } from './handler/routes';
export type * from './types';

/** What a connect flow starts from, every field named (see #start). */
interface StartInput {
  provider: string;
  tenantId: string;
  userId: string;
  scopes: readonly string[] | undefined;
  redirectUri: string | undefined;
  browserBinding: string | undefined;
}
const OBJECT_PROTOTYPE: { provider?: unknown; tenantId?: unknown; userId?: unknown } = Object.prototype;
/** Whether Object.prototype carries a connection id: the memo's plain reads would then see it. */
const POLLUTED_REF = () => OBJECT_PROTOTYPE.provider !== undefined || OBJECT_PROTOTYPE.tenantId !== undefined || OBJECT_PROTOTYPE.userId !== undefined;
const VALID_WEBHOOK: WebhookVerification = Object.freeze({ valid: true });
const warnedDevKeys = new Set<string>();

/**
 * One handle on the credential vault. Instances that open the same store in one process
 * (worker threads included) share one native engine and cache; each keeps its own memo.
 *
 * Construction is synchronous and never throws for I/O: the store opens in the background,
 * every method waits for it, and {@link Authpipe.ready} reports how it went.
 */
export class Authpipe extends EventEmitter<AuthpipeEvents> {
  #native: NativeAuthpipe | undefined;
  #memo: CredentialMemo | undefined;
  /** This engine's memo hits (set once open). */
  #hits: MemoHitTally | undefined;
  #stopTelemetry: (() => void) | undefined;
  readonly #opening: Promise<NativeAuthpipe>;
  #closed = false;

  static {
    // The CLI's internal calls reach the handle through lib/internal.ts, not a public method.
    internals.handle = (authpipe) => authpipe.#handle();
  }

  /**
   * @throws {AuthpipeError} `INVALID_ARGUMENT` naming the bad option.
   * @example
   * const authpipe = new Authpipe({ store: './data/authpipe.db', masterKey: process.env.AUTHPIPE_MASTER_KEY });
   */
  constructor(options: AuthpipeOptions = {}) {
    super();
    const { openInput, memoLimit, telemetry } = parseOptions(options);
    try {
      native.checkOptions(openInput);
    } catch (err) {
      throw fromNative(err);
    }
    this.#opening = native
      .open(openInput)
      .then(
        (handle) => {
          if (this.#closed) return handle; // close() closes it
          this.#native = handle;
          this.#hits = memoHitTally(handle.stats().engineId);
          this.#memo = memoLimit > 0 ? new CredentialMemo(handle, memoLimit, this.#hits) : undefined;
          handle.subscribe((event) => this.#deliver(event));
          this.#stopTelemetry = attachTelemetry(handle, telemetry, this.#hits);
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
    let hit: Promise<Credential> | undefined;
    // The memo reads the ids plainly (the warm path stays a few Map lookups); a throwing getter
    // or trap, or a polluted Object.prototype, sends the call down the checked path instead.
    try {
      if (!POLLUTED_REF()) hit = this.#memo?.get(ref.provider, ref.tenantId, ref.userId);
    } catch {
      hit = undefined;
    }
    return hit ?? this.#getCredentialSlow(ref);
  }

  async #getCredentialSlow(ref: ConnectionRef): Promise<Credential> {
    const { provider, tenantId, userId } = connectionRef(ref);
    const handle = await this.#handle();
    try {
      // One call into Rust: the value at once on a native hit, else a promise (store, refresh).
      const served = handle.credential(provider, tenantId, userId);
      // (A thenable test, not instanceof: the promise may come from another realm, e.g. Jest's.)
      const out = 'then' in served ? await served : served;
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
    const list = args.list(inputs, 'connections', 'an array of connections (importConnections takes an array)');
    const checked = list.map((input, i) => importInput(input, list.length === 1 ? '' : `[${i}].`));
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
    const q = args.fields(query, 'query', ['tenantId', 'provider', 'status', 'limit', 'cursor']);
    const input = {
      tenantId: args.optionalString(q.tenantId, 'tenantId'),
      provider: args.optionalString(q.provider, 'provider'),
      status: args.optionalString(q.status, 'status'),
      limit: args.optionalInteger(q.limit, 'limit'),
      cursor: args.optionalString(q.cursor, 'cursor'),
    };
    const handle = await this.#handle();
    const page = await call(() => handle.listConnections(input));
    return Object.freeze({ connections: Object.freeze(page.connections.map(toConnection)), nextCursor: page.nextCursor ?? null });
  }

  /**
   * Deletes a connection: revokes it at the provider where a revocation endpoint exists
   * (RFC 7009, the refresh token), then deletes it here whatever the provider said.
   */
  async deleteConnection(ref: ConnectionRef): Promise<DeleteConnectionResult> {
    const { provider, tenantId, userId } = connectionRef(ref);
    const handle = await this.#handle();
    this.#memo?.delete(provider, tenantId, userId);
    const result = await call(() => handle.deleteConnection(provider, tenantId, userId));
    return Object.freeze({
      deleted: result.existed,
      revocation: result.revocation as DeleteConnectionResult['revocation'],
      revocationError: result.revocationError ?? null,
    });
  }

  /**
   * Starts connecting a user's account: returns the provider's authorization URL (PKCE S256
   * where the provider accepts it, a 256-bit single-use `state` stored hashed, valid 10 minutes).
   * Most apps use {@link Authpipe.handler} instead, which also binds the flow to the browser.
   * @example
   * const { url } = await authpipe.startConnect({ provider: 'attio', tenantId: 'org_acme', userId: 'user_123' });
   * res.redirect(url);
   */
  async startConnect(input: StartConnectInput): Promise<StartedConnect> {
    const i = args.fields(input, 'connection', ['provider', 'tenantId', 'userId', 'scopes', 'redirectUri']);
    const ref = connectionRef(i);
    const scopes = args.optionalStrings(i.scopes, 'scopes');
    const redirectUri = args.optionalString(i.redirectUri, 'redirectUri');
    return this.#start({ ...ref, scopes, redirectUri, browserBinding: undefined });
  }

  /** Every field is named, absent ones as undefined: napi would read a missing one from Object.prototype. */
  async #start(input: StartInput): Promise<StartedConnect & { callbackMethod: string }> {
    const handle = await this.#handle();
    const { provider, tenantId, userId, redirectUri, browserBinding } = input;
    const scopes = input.scopes ? [...input.scopes] : undefined;
    const started = await call(() => handle.startConnect({ provider, tenantId, userId, scopes, redirectUri, browserBinding }));
    return Object.freeze({ url: started.url, state: started.state, expiresAt: new Date(started.expiresAt), callbackMethod: started.callbackMethod });
  }

  /**
   * Completes a connect flow from the provider's callback: consumes the state (once), checks
   * `iss` (RFC 9207) and the browser binding, exchanges the code once, stores the tokens and
   * runs the provider's identity probe. Returns the connection's metadata, never a token.
   * @throws {AuthpipeError} `AUTHORIZATION_DENIED`, `INVALID_STATE`, `STATE_EXPIRED`,
   *   `STATE_ALREADY_USED`, `STATE_PROVIDER_MISMATCH`, `BROWSER_MISMATCH`, `ISSUER_MISMATCH`,
   *   `CODE_EXCHANGE_FAILED`, `PROVIDER_ERROR`, `PROVIDER_TIMEOUT`, `INSUFFICIENT_SCOPE`.
   * @example
   * const connection = await authpipe.handleCallback({ url: req.url });
   */
  async handleCallback(input: CallbackInput, options: CallbackOptions = {}): Promise<Connection> {
    const params = callbackParams(input);
    const o = args.fields(options, 'options', ['provider', 'browserBinding']);
    const provider = args.optionalString(o.provider, 'options.provider');
    const browserBinding = args.optionalString(o.browserBinding, 'options.browserBinding');
    const handle = await this.#handle();
    const connection = toConnection(await call(() => handle.handleCallback({ params, provider, browserBinding })));
    this.#memo?.delete(connection.provider, connection.tenantId, connection.userId);
    return connection;
  }

  /**
   * A short-lived token that lets a browser start one connect flow for one (tenant, user)
   * without naming them: hand it to `<ConnectButton sessionToken>`, or give it to the handler's
   * `/connect/:provider` (form field `session` in a POST, the `Authpipe-Session` header, or
   * `?session=`; a link checker that fetches a `?session=` URL uses it up). It is consumed when
   * its flow starts (mint one per attempt), lives `ttlSeconds` (default 600, at most 3600), and
   * may name the `providers` it allows (default: any).
   * @example
   * const { token } = await authpipe.createConnectSession({ tenantId: 'org_acme', userId: 'user_123', providers: ['attio'] });
   */
  async createConnectSession(input: { tenantId: string; userId: string; providers?: readonly string[]; ttlSeconds?: number }): Promise<ConnectSession> {
    const i = args.fields(input, 'session', ['tenantId', 'userId', 'providers', 'ttlSeconds']);
    const tenantId = args.string(i.tenantId, 'tenantId');
    const userId = args.string(i.userId, 'userId');
    const providers = args.optionalStrings(i.providers, 'providers');
    const ttlSeconds = args.optionalInteger(i.ttlSeconds, 'ttlSeconds');
    const handle = await this.#handle();
    const session = await call(() => handle.createConnectSession(tenantId, userId, providers, ttlSeconds));
    return Object.freeze({ token: session.token, expiresAt: new Date(session.expiresAt) });
  }

  /**
   * A Node `(req, res)` handler for the browser side of the connect flow (works with `http`,
   * Express and Fastify): `GET|POST {basePath}/connect/:provider` with a connect session
   * (`?session=`, a form field `session`, or the `Authpipe-Session` header; or `resolveUser`)
   * redirects to the provider and sets the flow cookie (`__Host-` and `Secure` when `appOrigin`
   * is https); `GET|POST {basePath}/callback[/:provider]` finishes the flow and renders a page
   * that `postMessage`s `{ type: 'authpipe:connect', ok, connection | error, flowId? }` (never a
   * token; an error carries its code and our words for it, never the provider's text) to
   * `window.opener` at `appOrigin`, or redirects to `returnTo` when there is no opener, with the
   * outcome in the query (`authpipe`, `authpipe_flow`, `authpipe_connection` or `authpipe_error`
   * and `authpipe_message`). `flowId` is the connect request's `flow` parameter, an id the page
   * made for the attempt (`@authpipe/react` does): the page believes only its own attempt's
   * answer. A parameter given twice, or a body over 64 KiB, is a 400.
   * @example
   * const handle = authpipe.handler({ appOrigin: 'https://app.example.com' });
   * app.use('/authpipe', (req, res) => handle(req, res)); // Express: keep the full URL (req.originalUrl)
   */
  handler(options: HandlerOptions): (req: IncomingMessage, res: ServerResponse) => void {
    args.object(options, 'options');
    return createNodeHandler(this.#handlerBackend(), options);
  }

  /**
   * {@link Authpipe.handler} as a WHATWG `(request: Request) => Promise<Response>`: the same
   * routes, cookies, pages and checks, for servers built on the Fetch API (Next.js App Router
   * route handlers, Hono, Remix, Bun). `resolveUser` receives the `Request`.
   * @example
   * // Next.js: app/authpipe/[...path]/route.ts
   * const handle = authpipe.fetchHandler({ appOrigin: 'https://app.example.com' });
   * export const GET = handle;
   * export const POST = handle;
   * @example
   * // Hono
   * app.all('/authpipe/*', (c) => handle(c.req.raw));
   */
  fetchHandler(options: HandlerOptions<Request>): (request: Request) => Promise<Response> {
    args.object(options, 'options');
    return createFetchHandler(this.#handlerBackend(), options);
  }

  #handlerBackend(): HandlerBackend {
    return {
      sessionKey: async (token, provider) => {
        const handle = await this.#handle();
        return call(() => handle.sessionKey(token, provider));
      },
      startConnect: (input) => this.#start({ ...input, scopes: undefined, redirectUri: undefined }),
      handleCallback: (params, provider, browserBinding) => this.handleCallback({ query: params }, { provider, browserBinding }),
    };
  }

  /**
   * Keeps a secret (an API key, a webhook signing secret) in the vault, encrypted with the
   * tenant's key. Replaces an existing secret of the same name.
   * @example
   * await authpipe.setSecret({ tenantId: 'org_acme', provider: 'attio', name: 'webhook', value: signingSecret });
   */
  async setSecret(ref: SecretRef & { value: string }): Promise<void> {
    const { tenantId, provider, name, value } = secretRef(ref, true);
    const handle = await this.#handle();
    await call(() => handle.setSecret(tenantId, provider, name, value!));
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
   * Verifies that a webhook request was signed by its provider, with the signing secret kept in
   * the vault (Attio: `setSecret({ tenantId, provider: 'attio', name: 'webhook', value })`, the
   * secret Attio returned when the webhook was created) or, for HubSpot, with the app's
   * `clientSecret` (signature v3, with its 5-minute timestamp window). The MAC is computed and
   * compared (in constant time) in Rust: the secret never reaches JS.
   *
   * Pass the raw body, byte for byte: a body parsed as JSON and serialised again is not what was
   * signed and fails with `WEBHOOK_SIGNATURE_MISMATCH`.
   *
   * Resolves `{ valid: true }`, and rejects for every other outcome, so a forgotten check fails
   * closed. The codes that mean "refuse the request" (answer 401; {@link isWebhookRejection}):
   * `WEBHOOK_SIGNATURE_MISSING`, `WEBHOOK_SIGNATURE_MALFORMED`, `WEBHOOK_SIGNATURE_MISMATCH`,
   * `WEBHOOK_TIMESTAMP_INVALID`, `WEBHOOK_TIMESTAMP_EXPIRED`. Those that mean "fix the
   * configuration": `WEBHOOK_SECRET_MISSING`, `WEBHOOK_UNSUPPORTED`, `UNKNOWN_PROVIDER`,
   * `INVALID_ARGUMENT`.
   * @throws {AuthpipeError} One of the codes above.
   * @example
   * // Express: the raw body on this route (not express.json()), one route per tenant.
   * app.post('/webhooks/attio/:tenantId', express.raw({ type: 'application/json' }), async (req, res) => {
   *   try {
   *     await authpipe.verifyWebhook({ provider: 'attio', tenantId: req.params.tenantId, headers: req.headers, body: req.body });
   *   } catch (err) {
   *     if (isWebhookRejection(err)) return res.sendStatus(401);
   *     throw err;
   *   }
   *   const event = JSON.parse(req.body.toString('utf8'));
   *   res.sendStatus(200);
   * });
   *
   * // HubSpot: the method and the full URL are signed too.
   * await authpipe.verifyWebhook({
   *   provider: 'hubspot', headers: req.headers, body: req.body,
   *   method: req.method, url: `https://app.example.com${req.originalUrl}`,
   * });
   */
  async verifyWebhook(input: VerifyWebhookInput): Promise<WebhookVerification> {
    const request = webhookInput(input);
    const handle = await this.#handle();
    await call(() => handle.verifyWebhook(request));
    return VALID_WEBHOOK;
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
   * Rotates a tenant's data key, online: a new key seals every write from now on (in every
   * instance sharing the store), every record of the tenant (connection tokens, secrets, pending
   * connect flows) is re-sealed under it, and then the old key is deleted. Reads and refreshes
   * go on meanwhile and never fail because of it. Keys are also rotated automatically (see
   * `tenantKeyRotation`); call this after a suspected exposure of one tenant's key, say.
   *
   * @example
   * const { generation, resealed } = await authpipe.rotateTenantKey('org_acme');
   * console.log(`org_acme now uses data key ${generation}; ${resealed} rows re-sealed`);
   * @throws {AuthpipeError} `TENANT_NOT_FOUND` if the tenant has no data key (it stored nothing
   *   yet, or was deleted); `VAULT_INTEGRITY` if a record of the tenant fails authentication
   *   (the rotation stops there, the old key stays, and reads of the other records go on).
   */
  async rotateTenantKey(tenantId: string): Promise<TenantKeyRotation> {
    const id = args.string(tenantId, 'tenantId');
    const handle = await this.#handle();
    return Object.freeze(await call(() => handle.rotateTenantKey(id)));
  }

  /**
   * Retires a master key once no tenant key uses it (after {@link Authpipe.rotateMasterKey}).
   * It can then be removed from `masterKeys`; configuring it again is refused (except with
   * `retired: true`, to repair a store, see the README). An instance still running with it as
   * its primary key can no longer create tenant keys (`VAULT_KEY_MISMATCH`): restart it with the
   * new configuration. Retiring a key the store has retired already succeeds.
   * @throws {AuthpipeError} `KEY_IN_USE` while tenant keys are still wrapped with it.
   */
  async retireMasterKey(id: string): Promise<void> {
    const keyId = args.string(id, 'id');
    const handle = await this.#handle();
    await call(() => handle.retireMasterKey(keyId));
  }

  /**
   * Deletes a tenant: destroys its data key and deletes its connections, secrets, connect
   * sessions and pending connect flows, in one transaction. Other instances sharing the store
   * forget the key too, and a tenant created again later gets a new key.
   *
   * What is shredded: the key's row in the live store (SQLite also overwrites the freed pages,
   * `secure_delete`, and truncates its WAL), so rows copied out of the live store no longer
   * decrypt. What is not: a backup taken before the delete holds the wrapped tenant key, and
   * opens with the master key; so do replicas, and PostgreSQL's WAL and its archives and base
   * backups, until they expire. On PostgreSQL the deleted rows also stay in the table files until
   * their space is reused: `VACUUM` marks them reusable without overwriting them, and
   * `VACUUM FULL` writes a new file but does not wipe the old one's blocks on disk.
   * Crypto-shredding holds once every copy of the wrapped key is gone, or once the master key is
   * rotated, retired and destroyed: backups' wrapped tenant keys then no longer unwrap.
   *
   * Kept: the tenant id and its key's last generation number (no key material), so that a
   * tenant created again gets a key of a later generation. A callback whose code is being
   * exchanged meanwhile stores nothing (`INVALID_STATE`); a connect session checked in the
   * instant before the delete can still start a flow.
   */
  async deleteTenant(tenantId: string): Promise<TenantDeletion> {
    const id = args.string(tenantId, 'tenantId');
    const handle = await this.#handle();
    const deleted = await call(() => handle.deleteTenant(id));
    this.#memo?.clear();
    return Object.freeze(deleted);
  }

  /**
   * Refreshes a connection now (single-flight: joins a refresh already in flight), whether or
   * not it is due. Resolves with the connection afterwards; its `status` and `lastError` say how
   * it went (`revoked` after `invalid_grant`, `degraded` after a transient failure).
   */
  async refreshConnection(ref: ConnectionRef): Promise<Connection> {
    const { provider, tenantId, userId } = connectionRef(ref);
    const handle = await this.#handle();
    return toConnection(await call(() => handle.refreshConnection(provider, tenantId, userId)));
  }

  /**
   * Probes a connection's health now with its provider's identity endpoint (Attio `/v2/self`):
   * a dead token makes it `revoked`, a lost required scope `insufficient_scope`, a provider
   * error or timeout `degraded`. Resolves with the connection afterwards.
   */
  async checkConnection(ref: ConnectionRef): Promise<Connection> {
    const { provider, tenantId, userId } = connectionRef(ref);
    const handle = await this.#handle();
    return toConnection(await call(() => handle.checkConnection(provider, tenantId, userId)));
  }

  /** Connection counts by status and by provider, from the in-memory cache (no I/O). */
  async health(): Promise<HealthSummary> {
    const handle = await this.#handle();
    return toHealth(await call(() => handle.health()));
  }

  #deliver(e: EventOutput): void {
    const event = toEvent(e);
    // A throwing listener must not break delivery to the others, nor reach the Rust thread.
    try {
      (this.emit as (name: string, payload: unknown) => boolean)(event.type, event);
    } catch (err) {
      process.nextTick(() => {
        throw err;
      });
    }
  }

  /**
   * The metrics of the engine behind this instance (shared by the instances on its store), in
   * the Prometheus text exposition format 0.0.4, for the app to serve on its own `/metrics`
   * with {@link PROMETHEUS_CONTENT_TYPE}: connections by provider and status, refreshes and
   * probes by provider and outcome with their latency histograms, requests in flight, waits for
   * a provider slot, getCredential calls by where they were served from, lease takeovers,
   * change-feed lag, store errors and reconnects, and seconds since each provider's last
   * successful refresh (README, Operating). Labels are only `provider`, `status` and `outcome`:
   * never a tenant, a user or a secret. Counters count from the engine's start. No I/O.
   * @example
   * import { PROMETHEUS_CONTENT_TYPE } from '@authpipe/node';
   * app.get('/metrics', async (req, res) => {
   *   res.set('content-type', PROMETHEUS_CONTENT_TYPE).send(await authpipe.metrics());
   * });
   */
  async metrics(): Promise<string> {
    const handle = await this.#handle();
    return call(() => prometheusText(handle, this.#hits!));
  }

  /** Diagnostics of the native engine behind this instance. */
  async stats(): Promise<AuthpipeStats> {
    const handle = await this.#handle();
    const { remoteChangeLagMs, ...counts } = await call(() => handle.stats());
    const lag = remoteChangeLagMs ? (Object.freeze([...remoteChangeLagMs]) as unknown as readonly [number, number, number]) : null;
    return Object.freeze({ ...counts, remoteChangeLagMs: lag });
  }

  /**
   * Releases this instance. The engine (store, cache, background work) closes with the last
   * instance on its store; the process can then exit on its own. Resolves once the refreshes
   * already under way are stored (a provider may have spent the old refresh token), at most the
   * refresh lease (`httpTimeoutMs` + 5 s) later; their events reach the listeners first.
   */
  async close(): Promise<void> {
    this.#closed = true;
    this.#memo?.clear();
    this.#memo = undefined;
    const handle = this.#native ?? (await this.#opening.catch(() => undefined));
    await handle?.close();
    this.#stopTelemetry?.(); // after the close: the records of the refreshes it waited for are logged
  }

  async #handle(): Promise<NativeAuthpipe> {
    if (this.#closed) throw new AuthpipeError('CLOSED', 'this Authpipe instance was closed');
    return this.#native ?? this.#opening;
  }
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
