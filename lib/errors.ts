/**
 * Every error @authpipe/node throws or rejects with is an {@link AuthpipeError} with a stable
 * {@link AuthpipeErrorCode}. Messages name fields and ids, never secret values.
 */

/** Stable error codes. Branch on these, not on messages. */
export type AuthpipeErrorCode =
  /** An argument or option is missing, of the wrong type, or out of bounds. */
  | 'INVALID_ARGUMENT'
  /** The provider id is neither built in nor configured in `providers`. */
  | 'UNKNOWN_PROVIDER'
  /** No connection exists for (provider, tenantId, userId). */
  | 'CONNECTION_NOT_FOUND'
  /** The access token expired and could not be refreshed. */
  | 'CONNECTION_EXPIRED'
  /** The provider revoked the connection; the user has to connect again. */
  | 'CONNECTION_REVOKED'
  /** No secret exists under (tenantId, provider, name). */
  | 'SECRET_NOT_FOUND'
  /** A master key does not match the store, or a key the store needs is not configured. */
  | 'VAULT_KEY_MISMATCH'
  /** The tenant's data key was destroyed (`deleteTenant`), so its records cannot be decrypted. */
  | 'VAULT_KEY_MISSING'
  /** A stored ciphertext failed authentication: altered, or copied from another row or tenant. */
  | 'VAULT_INTEGRITY'
  /** The master key still wraps tenant keys; run `rotateMasterKey()` first. */
  | 'KEY_IN_USE'
  /** The store failed (I/O, SQL, not an Authpipe store). */
  | 'STORE_ERROR'
  /** The user (or the provider) declined the authorization (`error=access_denied`). */
  | 'AUTHORIZATION_DENIED'
  /** The provider answered the authorization request with another error. */
  | 'AUTHORIZATION_FAILED'
  /** A callback's `state` is missing or unknown. */
  | 'INVALID_STATE'
  /** The connect flow expired (10 minutes) before the callback. */
  | 'STATE_EXPIRED'
  /** The callback was already handled: a state is usable once. */
  | 'STATE_ALREADY_USED'
  /** The callback arrived for another provider than the flow was started for. */
  | 'STATE_PROVIDER_MISMATCH'
  /** The callback did not come from the browser that started the flow. */
  | 'BROWSER_MISMATCH'
  /** The callback's `iss` is not the provider's issuer, or is missing where required (RFC 9207). */
  | 'ISSUER_MISMATCH'
  /** The provider refused to exchange the authorization code. */
  | 'CODE_EXCHANGE_FAILED'
  /** The provider answered with something that is not a valid OAuth response. */
  | 'PROVIDER_ERROR'
  /** The provider did not answer in time, or could not be reached. */
  | 'PROVIDER_TIMEOUT'
  /** The connection lacks a scope the app requires (`requiredScopes`). */
  | 'INSUFFICIENT_SCOPE'
  /** A connect session token is unknown, expired, or not valid for that provider. */
  | 'SESSION_INVALID'
  /** The instance was closed. */
  | 'CLOSED'
  /** A bug in @authpipe/node (an invariant broke or Rust panicked); the operation did not complete. */
  | 'INTERNAL';

/** All codes, for exhaustive handling. */
export const ERROR_CODES: readonly AuthpipeErrorCode[] = Object.freeze([
  'INVALID_ARGUMENT',
  'UNKNOWN_PROVIDER',
  'CONNECTION_NOT_FOUND',
  'CONNECTION_EXPIRED',
  'CONNECTION_REVOKED',
  'SECRET_NOT_FOUND',
  'VAULT_KEY_MISMATCH',
  'VAULT_KEY_MISSING',
  'VAULT_INTEGRITY',
  'KEY_IN_USE',
  'STORE_ERROR',
  'AUTHORIZATION_DENIED',
  'AUTHORIZATION_FAILED',
  'INVALID_STATE',
  'STATE_EXPIRED',
  'STATE_ALREADY_USED',
  'STATE_PROVIDER_MISMATCH',
  'BROWSER_MISMATCH',
  'ISSUER_MISMATCH',
  'CODE_EXCHANGE_FAILED',
  'PROVIDER_ERROR',
  'PROVIDER_TIMEOUT',
  'INSUFFICIENT_SCOPE',
  'SESSION_INVALID',
  'CLOSED',
  'INTERNAL',
]);

/**
 * The error type of @authpipe/node.
 *
 * @example
 * try {
 *   await authpipe.getCredential({ provider: 'attio', tenantId, userId });
 * } catch (err) {
 *   if (err instanceof AuthpipeError && err.code === 'CONNECTION_REVOKED') promptReconnect();
 *   else throw err;
 * }
 */
export class AuthpipeError extends Error {
  /** Stable, machine-readable code. */
  readonly code: AuthpipeErrorCode;

  constructor(code: AuthpipeErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'AuthpipeError';
    this.code = code;
  }
}

const NATIVE_ERROR = /^AUTHPIPE:([A-Z_]+):([\s\S]*)$/;
const KNOWN = new Set<string>(ERROR_CODES);

/**
 * Turns whatever the native layer threw into an AuthpipeError. Native errors arrive as
 * `AUTHPIPE:<CODE>:<message>`; anything else is a bug (a Rust panic included) and becomes
 * INTERNAL.
 * @internal
 */
export function fromNative(err: unknown): AuthpipeError {
  if (err instanceof AuthpipeError) return err;
  // Not `instanceof Error`: native errors may come from another realm (vm contexts, Jest).
  const message = typeof (err as { message?: unknown })?.message === 'string' ? (err as Error).message : String(err);
  const match = NATIVE_ERROR.exec(message);
  if (match && KNOWN.has(match[1]!)) {
    return new AuthpipeError(match[1] as AuthpipeErrorCode, match[2]!);
  }
  return new AuthpipeError('INTERNAL', `internal error in @authpipe/node: ${message}`, { cause: err });
}

/** @internal */
export function invalidArgument(message: string): AuthpipeError {
  return new AuthpipeError('INVALID_ARGUMENT', message);
}
