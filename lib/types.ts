/** Public types of @authpipe/node. */

import type { ConnectionEventName, ConnectionStatus, CredentialType, RevocationOutcome } from './generated';

// The string unions are generated from the core's enums (see ./generated.ts).
export type { ConnectionEventName, ConnectionStatus, CredentialType };

/** A master key: 32 random bytes, as base64 (44 chars) or hex (64 chars), or the raw bytes. */
export type MasterKeyMaterial = string | Uint8Array;

/** Options of `new Authpipe()`. */
export interface AuthpipeOptions {
  /**
   * Where connections are stored. Default: `./.authpipe/authpipe.db`.
   * - An SQLite file path (`sqlite:` prefix optional). Processes on one machine may share it.
   * - `postgres://user:password@host:5432/database?schema=authpipe`: PostgreSQL, for app
   *   instances on several machines (`schema` defaults to `authpipe`; tables are created and
   *   migrated on start). Needs `masterKey` or `masterKeys`, the same in every instance.
   * - `':memory:'`: a private in-memory store (tests).
   *
   * Instances sharing a store refresh each connection once between them (a lease in the store)
   * and see each other's changes within milliseconds.
   */
  store?: string;
  /**
   * The master key that wraps every tenant's data key. Defaults to the `AUTHPIPE_MASTER_KEY`
   * environment variable. With neither, outside `NODE_ENV=production`, a development key is
   * generated into a 0600 file beside the store (`<store>.key`); in production, `new Authpipe()`
   * fails with `INVALID_ARGUMENT`.
   *
   * Generate one with `node -e "console.log(require('crypto').randomBytes(32).toString('base64'))"`.
   */
  masterKey?: MasterKeyMaterial;
  /**
   * Several master keys, for rotation: the first encrypts, all decrypt. To rotate, put the new
   * key first, call `rotateMasterKey()`, then `retireMasterKey(oldId)`, then drop the old key.
   */
  masterKeys?: ReadonlyArray<MasterKeyConfig>;
  /**
   * Provider configuration by provider id. A key that is not a built-in provider
   * (attio, close, copper, dynamics365, hubspot, pipedrive, salesforce, zoho) adds a custom one.
   */
  providers?: Readonly<Record<string, ProviderConfig>>;
  /**
   * Most credentials this instance keeps in its in-process memo (default 100,000). The memo
   * only holds credentials already handed out, and drops each one the moment it changes.
   */
  memoLimit?: number;
  /** Timeout of each call to a provider (token exchange, refresh, identity, revocation), ms. Default 15,000. */
  httpTimeoutMs?: number;
  /**
   * Most token and probe requests in flight per provider (default 8), so that many connections
   * coming due together do not flood a provider.
   */
  providerConcurrency?: number;
  /**
   * How often each connection's health is probed with its provider's identity endpoint (Attio
   * `/v2/self`), ms; probes are spread evenly over the interval. Default 3,600,000 (1 hour);
   * 0 turns scheduled probes off (`checkConnection` still works).
   */
  healthCheckIntervalMs?: number;
  /**
   * When each tenant's data key is rotated on its own (see {@link Authpipe.rotateTenantKey}),
   * checked every 10 minutes by a background job. Every instance sharing a store counts the
   * values each key has sealed in the store itself, so the count survives restarts.
   */
  tenantKeyRotation?: TenantKeyRotationPolicy;
  /**
   * A pino-compatible logger (an object with `trace`, `debug`, `info`, `warn` and `error`, each
   * taking an object first): structured records with a stable `event` (`refresh.succeeded`,
   * `refresh.failed`, `connection.revoked`, `probe.failed`, `lease.taken_over`,
   * `store.unavailable`, `store.reconnected`, `tenant_key.rotated`, ... see the README, Logs),
   * carrying ids, error codes and durations, never a token or a secret. Default: nothing is
   * logged (but the one-time warning about a development master key, through `process.emitWarning`).
   * @example
   * import pino from 'pino';
   * const authpipe = new Authpipe({ masterKey, logger: pino({ level: 'info' }).child({ component: 'authpipe' }) });
   */
  logger?: AuthpipeLogger;
  /**
   * An OpenTelemetry `MeterProvider` (from `@opentelemetry/api`'s `metrics.getMeterProvider()`
   * or an SDK's): the metrics of {@link Authpipe.metrics} are registered on its meter
   * `@authpipe/node` under the same names (counters and gauges observed at each collection; the
   * refresh and probe duration histograms recorded as they happen). @opentelemetry/api is an
   * optional peer dependency: nothing of it is loaded unless the app passes this.
   * @example
   * import { metrics } from '@opentelemetry/api';
   * const authpipe = new Authpipe({ masterKey, meterProvider: metrics.getMeterProvider() });
   */
  meterProvider?: OpenTelemetryMeterProvider;
}

/**
 * The logger the `logger` option takes: pino's, or any with these five methods, each called
 * as `logger[level]({ event, ...fields }, message)`.
 */
export interface AuthpipeLogger {
  trace(fields: object, message?: string): void;
  debug(fields: object, message?: string): void;
  info(fields: object, message?: string): void;
  warn(fields: object, message?: string): void;
  error(fields: object, message?: string): void;
}

/**
 * What `meterProvider` takes: the part of `@opentelemetry/api`'s `MeterProvider` this package
 * uses, declared by shape so that the package does not depend on @opentelemetry/api.
 */
export interface OpenTelemetryMeterProvider {
  getMeter(name: string, version?: string): OpenTelemetryMeter;
}

/** The part of an OpenTelemetry `Meter` this package uses. */
export interface OpenTelemetryMeter {
  createHistogram(name: string, options?: OpenTelemetryInstrumentOptions): OpenTelemetryHistogram;
  createObservableCounter(name: string, options?: OpenTelemetryInstrumentOptions): OpenTelemetryObservable;
  createObservableGauge(name: string, options?: OpenTelemetryInstrumentOptions): OpenTelemetryObservable;
  addBatchObservableCallback(callback: (result: OpenTelemetryBatchObservableResult) => void, observables: OpenTelemetryObservable[]): void;
  removeBatchObservableCallback(callback: (result: OpenTelemetryBatchObservableResult) => void, observables: OpenTelemetryObservable[]): void;
}

/** An instrument's description, unit and (histograms) advised bucket bounds. */
export interface OpenTelemetryInstrumentOptions {
  description?: string;
  unit?: string;
  advice?: { explicitBucketBoundaries?: number[] };
}

/** Attributes of a measurement: only `provider`, `status` and `outcome` here. */
export type OpenTelemetryAttributes = Record<string, string>;

/** An OpenTelemetry histogram. */
export interface OpenTelemetryHistogram {
  record(value: number, attributes?: OpenTelemetryAttributes): void;
}

/** An OpenTelemetry observable instrument (opaque here: passed back to `observe`). */
export type OpenTelemetryObservable = object;

/** What a batch observable callback observes into. */
export interface OpenTelemetryBatchObservableResult {
  observe(observable: OpenTelemetryObservable, value: number, attributes?: OpenTelemetryAttributes): void;
}

/** When tenant data keys are rotated automatically. */
export interface TenantKeyRotationPolicy {
  /**
   * Rotate a key this many days old. Default 90, bounding what one leaked data key opens to a
   * quarter's records; 0 turns rotation by age off.
   */
  maxAgeDays?: number;
  /**
   * Rotate a key once it has sealed this many values (tokens, secrets, PKCE verifiers).
   * Default 2^30 (1,073,741,824): AES-GCM with random nonces must stay under 2^32 encryptions
   * per key, and a tenant with 100,000 hourly refreshes would reach 2^32 in about 1.6 years.
   * At most 2^32; cannot be turned off.
   */
  maxEncryptions?: number;
}

/**
 * The app's settings for one provider. For a built-in provider (attio, close, copper,
 * dynamics365, hubspot, pipedrive, salesforce, zoho) the endpoint fields override its
 * definition (tests, sandboxes). A custom provider needs `authorizeUrl` and `tokenUrl`, or an
 * `issuer` to discover them from (RFC 8414 / OpenID Connect discovery). Endpoints must be https
 * (http only on loopback).
 *
 * @example
 * providers: {
 *   attio: { clientId, clientSecret, redirectUri: 'https://app.example.com/authpipe/callback/attio', requiredScopes: ['record_permission:read'] },
 *   mycrm: { issuer: 'https://login.mycrm.example', clientId, clientSecret, redirectUri },
 * }
 */
export interface ProviderConfig {
  clientId?: string;
  clientSecret?: string;
  /** The redirect URI registered with the provider (exactly). */
  redirectUri?: string;
  /** More registered redirect URIs, selectable per `startConnect`. */
  redirectUris?: readonly string[];
  /** Scopes to request (default: the provider's default scopes; Attio takes scopes from the app's settings). */
  scopes?: readonly string[];
  /** Scopes a connection must be granted, or the callback fails with `INSUFFICIENT_SCOPE`. */
  requiredScopes?: readonly string[];
  /** Values for the provider's URL templates (Dynamics 365: `{ org: 'contoso' }`; Microsoft `tenant`). */
  params?: Readonly<Record<string, string>>;
  displayName?: string;
  authorizeUrl?: string;
  tokenUrl?: string;
  revokeUrl?: string;
  /** The identity / health probe (`GET` with the access token as Bearer). */
  identityUrl?: string;
  /** The authorization server's issuer; with `issParameterSupported`, callbacks must carry it (RFC 9207). */
  issuer?: string;
  issParameterSupported?: boolean;
  /** Client authentication at the token endpoint: HTTP Basic (default for custom providers) or in the body. */
  clientAuth?: 'basic' | 'body';
  pkce?: boolean;
  scopeSeparator?: string;
  /** Token-response fields to keep with the connection (returned as `extras`). */
  tokenFields?: readonly string[];
  /** Lifetime to assume when the token response has no `expires_in`, in seconds. */
  defaultExpiresIn?: number;
  /** How a custom provider signs its webhooks, for {@link Authpipe.verifyWebhook} (Attio's and HubSpot's are built in). */
  webhook?: WebhookScheme;
}

/**
 * A provider's webhook signature scheme: an HMAC-SHA256, keyed with a secret, of what `signs`
 * names. A provider that signs the raw body in hex in `X-Signature`, with a secret per tenant:
 * `{ signs: 'body', signatureHeaders: ['X-Signature'], encoding: 'hex' }`.
 */
export interface WebhookScheme {
  /** `body`: the raw body. `methodUriBodyTimestamp`: HubSpot's v3 (`method + url + body + timestamp`, some escapes in the URL decoded). */
  signs: 'body' | 'methodUriBodyTimestamp';
  /** The headers that may carry the signature, the preferred first; the first present is verified. */
  signatureHeaders: readonly string[];
  encoding: 'hex' | 'base64';
  /** A signed timestamp header, and how far from now (either way) it may be. */
  timestamp?: { header: string; unit: 'seconds' | 'milliseconds'; toleranceSeconds: number };
  /** The key: a secret kept with `setSecret` per tenant (`vault`, the default), or the app's `clientSecret`. */
  key?: 'vault' | 'clientSecret';
}

/** Names one connection: one user of one tenant, connected to one provider. */
export interface ConnectionRef {
  provider: string;
  tenantId: string;
  userId: string;
}

/** What `getCredential` returns. Frozen; safe to share. */
export interface Credential {
  /** The access token or API key, to send to the provider. */
  readonly credential: string;
  readonly type: CredentialType;
  /** When the access token expires; `null` when it does not (API keys, Attio tokens). */
  readonly expiresAt: Date | null;
  /** Provider fields kept with the connection (e.g. Salesforce `instance_url`); `{}` if none. */
  readonly extras: Readonly<Record<string, unknown>>;
}

/** A connection's metadata. Never contains a secret. */
export interface Connection {
  readonly provider: string;
  readonly tenantId: string;
  readonly userId: string;
  readonly type: CredentialType;
  readonly status: ConnectionStatus;
  readonly scopes: readonly string[];
  /** The account at the provider (e.g. the Attio workspace), when known. */
  readonly account: { readonly id: string | null; readonly name: string | null } | null;
  readonly hasRefreshToken: boolean;
  readonly expiresAt: Date | null;
  readonly createdAt: Date;
  readonly updatedAt: Date;
  readonly lastRefreshAt: Date | null;
  readonly nextRefreshAt: Date | null;
  readonly lastCheckAt: Date | null;
  /**
   * The last failure: `code` is the provider's OAuth `error` (`invalid_grant`, ...), one of ours
   * (`rate_limited`, `unreachable`, `http_503`, `refresh_outcome_unknown`, an
   * {@link AuthpipeErrorCode}), or `redacted` when a provider put a value it was sent into its
   * error code; `message` keeps a provider's description only with every value it was sent cut
   * out as `[redacted]`.
   */
  readonly lastError: { readonly code: string; readonly message: string } | null;
}

interface ImportBase extends ConnectionRef {
  /** Scopes granted to the connection. */
  scopes?: readonly string[];
  /** Provider fields to keep with the connection (a plain JSON object), returned by `getCredential`. */
  extras?: Readonly<Record<string, unknown>>;
}

/** An OAuth connection to import (e.g. migrated from another tool). */
export interface ImportOAuthConnection extends ImportBase {
  accessToken: string;
  refreshToken?: string;
  /** When the access token expires: a Date or ms since the epoch. Omit if it never expires. */
  expiresAt?: Date | number;
  apiKey?: never;
}

/** An API-key connection to import. */
export interface ImportApiKeyConnection extends ImportBase {
  apiKey: string;
  accessToken?: never;
  refreshToken?: never;
  expiresAt?: never;
}

export type ImportConnectionInput = ImportOAuthConnection | ImportApiKeyConnection;

/** Filters and paging of `listConnections`. */
export interface ListConnectionsQuery {
  tenantId?: string;
  provider?: string;
  status?: ConnectionStatus;
  /** Page size, 1-1000 (default 100). */
  limit?: number;
  /** `nextCursor` of the previous page. */
  cursor?: string;
}

export interface ConnectionPage {
  readonly connections: readonly Connection[];
  /** Pass as `cursor` for the next page; `null` on the last page. */
  readonly nextCursor: string | null;
}

/** Names a secret kept with `setSecret`. Without `provider` the secret is tenant-wide. */
export interface SecretRef {
  tenantId: string;
  name: string;
  provider?: string;
}

/**
 * Request headers as a server hands them over: Node's `req.headers` (`IncomingHttpHeaders`), a
 * fetch `Headers`, or a plain record. Names are case-insensitive.
 */
export type WebhookHeaders = Headers | Readonly<Record<string, string | readonly string[] | number | undefined>>;

/**
 * The raw request body, byte for byte as received: a `Buffer` or `Uint8Array` (`express.raw()`,
 * `await request.arrayBuffer()`) or the body as text (`await request.text()`). Not a parsed
 * object: JSON parsed and serialised again is not what the provider signed.
 */
export type WebhookBody = Uint8Array | ArrayBuffer | string;

/** A received webhook request, for {@link Authpipe.verifyWebhook}. */
export interface VerifyWebhookInput {
  /** The provider that sent it (`attio`, `hubspot`, or a custom provider with a `webhook` scheme). */
  provider: string;
  /**
   * Whose signing secret verifies it (kept with `setSecret({ tenantId, provider, name, value })`).
   * Required unless the provider signs with the app's client secret (HubSpot) and no `name` is given.
   */
  tenantId?: string;
  /** The secret's name; default `'webhook'`. Given for HubSpot, the key is that vault secret instead of `clientSecret`. */
  name?: string;
  headers: WebhookHeaders;
  body: WebhookBody;
  /** The request method (`req.method`): required where the signature covers it (HubSpot). */
  method?: string;
  /**
   * The full URL the provider called, with its query (`https://app.example.com/webhooks/hubspot?...`):
   * required where the signature covers it (HubSpot). Build it from your public origin rather than
   * from the request's `Host` header.
   */
  url?: string;
}

/** What {@link Authpipe.verifyWebhook} resolves with: it rejects for every other outcome. */
export interface WebhookVerification {
  readonly valid: true;
}

/** One entry of `masterKeys`. */
export interface MasterKeyConfig {
  readonly id: string;
  readonly key: MasterKeyMaterial;
  /**
   * Unwrap only: a key another instance already retired, configured after the current primary to
   * repair a store whose tenant keys it still wraps (then `rotateMasterKey()`, then drop it).
   * Never valid on the first key.
   */
  readonly retired?: boolean;
}

export interface MasterKeyRotation {
  /** The key every tenant key is now wrapped with. */
  readonly primaryKeyId: string;
  /** Tenant keys rewrapped by this call. */
  readonly rewrapped: number;
  /** Tenant keys that were already wrapped with the primary key. */
  readonly alreadyCurrent: number;
}

export interface TenantKeyRotation {
  readonly tenantId: string;
  /** The tenant's data key now (generations count up from 1). */
  readonly generation: number;
  /** Rows re-sealed under the new key by this call (connections, secrets, pending connect flows). */
  readonly resealed: number;
}

export interface TenantDeletion {
  readonly connections: number;
  readonly secrets: number;
  /** Connect sessions deleted (expired ones included). */
  readonly sessions: number;
  /** Connect flows deleted (ended ones included). */
  readonly flows: number;
}

/** Diagnostics of the native engine behind an instance. */
export interface AuthpipeStats {
  /** Same value for every instance sharing one engine (one store in one process). */
  readonly engineId: number;
  /** The store, without credentials. */
  readonly store: string;
  readonly cachedConnections: number;
  /** Reads that went to the store (cache misses, metadata and list calls, following changes). */
  readonly storeReads: number;
  /** Cached connections updated because another process changed them in the store. */
  readonly remoteChanges: number;
  /** Full reloads of the cache after changes may have been missed (a lost database connection). */
  readonly resyncs: number;
  /**
   * How long other processes' writes took to reach this instance's cache, in ms, over the last
   * 4,096 of them: `[median, p99, max]`, measured from the writer's clock just before its commit.
   * `null` until the first.
   */
  readonly remoteChangeLagMs: readonly [number, number, number] | null;
}

/** Input of `startConnect`. */
export interface StartConnectInput extends ConnectionRef {
  /** Scopes to request instead of the configured ones. */
  scopes?: readonly string[];
  /** One of the provider's configured redirect URIs (default: the first). */
  redirectUri?: string;
}

/** A started connect flow: send the browser to `url` before `expiresAt`. */
export interface StartedConnect {
  readonly url: string;
  /** The flow's `state` (also in `url`); stored hashed, usable once. */
  readonly state: string;
  readonly expiresAt: Date;
}

/**
 * A callback as it arrived: its full URL, its query string or parameters, or its form body
 * (Copper calls back with a POST).
 */
export type CallbackInput =
  | { url: string }
  | { query: string | URLSearchParams | Readonly<Record<string, string>> }
  | { body: string | URLSearchParams | Readonly<Record<string, string>> };

/** Checks `handleCallback` can make on top of the state. */
export interface CallbackOptions {
  /** The provider the callback path names, when the app uses one callback path per provider. */
  provider?: string;
  /** The browser-binding value the app set in a cookie when it started the flow (the handler does this). */
  browserBinding?: string;
}

/** A connect session: pass `token` to the browser (e.g. `<ConnectButton sessionToken>`). */
export interface ConnectSession {
  readonly token: string;
  readonly expiresAt: Date;
}

/** What `deleteConnection` did. */
export interface DeleteConnectionResult {
  /** Whether the connection existed here. */
  readonly deleted: boolean;
  /**
   * Revocation at the provider: `revoked`, `not_supported` (no revocation endpoint: Attio,
   * Copper, Microsoft; ask the user to remove the app there), `not_attempted` (no client
   * credentials configured, or nothing to revoke) or `failed` (see `revocationError`; the local
   * copy is deleted all the same).
   */
  readonly revocation: RevocationOutcome;
  readonly revocationError: string | null;
}

/** Payload of every connection event. Never contains a secret. */
export interface ConnectionEvent extends ConnectionRef {
  readonly type: ConnectionEventName;
  readonly at: Date;
  /** The connection's status after the event, when it has one. */
  readonly status: ConnectionStatus | null;
  readonly expiresAt: Date | null;
  /** For failures: a stable code (`invalid_grant`, `rate_limited`, `http_503`, ...) and a message. */
  readonly error: { readonly code: string; readonly message: string } | null;
}

/** `connection.refresh_failed`: a transient failure; the still-valid token keeps being served. */
export interface RefreshFailedEvent extends ConnectionEvent {
  /** Consecutive failures so far. */
  readonly attempt: number;
  /** When the next refresh is tried. */
  readonly nextRetryAt: Date;
}

/**
 * Events of an `Authpipe` instance, for `authpipe.on(name, listener)`: one entry per
 * {@link ConnectionEventName} (`__test__/native.spec.ts` checks that at compile time).
 */
export interface AuthpipeEvents {
  'connection.created': [ConnectionEvent];
  'connection.refreshed': [ConnectionEvent];
  'connection.refresh_failed': [RefreshFailedEvent];
  'connection.degraded': [ConnectionEvent];
  'connection.revoked': [ConnectionEvent];
  'connection.recovered': [ConnectionEvent];
  'connection.deleted': [ConnectionEvent];
}

/** Connection counts by status, overall and per provider. */
export interface HealthSummary {
  readonly total: number;
  readonly byStatus: Readonly<Partial<Record<ConnectionStatus, number>>>;
  readonly byProvider: Readonly<Record<string, Readonly<Partial<Record<ConnectionStatus, number>>>>>;
}
