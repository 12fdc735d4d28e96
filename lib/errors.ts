/**
 * Every error @authpipe/node throws or rejects with is an {@link AuthpipeError} with a stable
 * {@link AuthpipeErrorCode}. Messages name fields and ids, never secret values.
 */

import { ERROR_CODES as GENERATED_CODES, type AuthpipeErrorCode } from './generated';

// The codes and their docs are generated from the core's `ErrorCode` (see ./generated.ts).
export type { AuthpipeErrorCode };

/** All codes, for exhaustive handling. */
export const ERROR_CODES: readonly AuthpipeErrorCode[] = GENERATED_CODES;

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
